//! The integration tests, linked into one binary: each linked test binary
//! carries the whole dependency tree (Cedar, aws-lc, hyper), so one binary
//! instead of a dozen saves minutes of linking and gigabytes of disk.

mod common;

mod audit;
mod audit_kill;
mod cli;
mod credentials;
mod halt;
mod leaks;
mod limits;
mod monitoring;
mod mtls;
mod policy;
mod proxy;
mod route_props;
mod signing;
mod sim;
mod smuggling;
mod tokens;
