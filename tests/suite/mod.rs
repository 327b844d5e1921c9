mod audit;
mod daemon;
mod doctor;
mod harness;
mod policy;
mod run_policy;
mod sandbox;
mod tidy;
