mod daemon;
mod harness;
mod sandbox;
