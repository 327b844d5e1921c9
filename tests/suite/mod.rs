mod harness;
mod sandbox;
