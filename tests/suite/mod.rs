mod approvals;
mod audit;
mod daemon;
mod harness;
mod policy;
mod run_policy;
mod sandbox;
