//! tap-controller: keeps a `TransactionPipeline` converged into its AWS stack.
//!
//! Data flows one way: spec → [`desired`] stack (pure) → per-field plan against what the [`drivers`]
//! observe → actions executed by the [`engine`] over the dependency graph → status.

pub mod api;
pub mod aws;
pub mod desired;
pub mod drivers;
pub mod engine;
pub mod k8s;
