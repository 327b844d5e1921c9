mod audit;
mod harness;
mod policy;
mod run_policy;
mod sandbox;
