//! Test support shared by the integration tests, the Lambda handler tests and the benchmarks:
//! - [`cluster`]: the Kubernetes cluster `KUBECONFIG` names, if any;
//! - [`emulator`]: a local AWS emulator (moto or ministack) on a free loopback port;
//! - [`stack`]: a desired stack built against it, its resources picked by kind, images pushed;
//! - [`lifecycle`]: one driver on one resource, through create → converged → drift → correction →
//!   delete, with the assertions every driver test makes;
//! - [`datapath`] and [`lambda_runtime_api`]: the deployed stack running a transaction file end to end;
//! - [`faults`], [`inventory`], [`pipeline`]: the reliability suites' fault proxy and crash interceptor,
//!   what an account holds of a stack, and whole passes of apply and destroy;
//! - [`scale`]: the scale benchmark's recording AWS proxy, controller process and `/proc` readings (Linux).

pub mod cluster;
pub mod datapath;
pub mod emulator;
pub mod faults;
pub mod inventory;
pub mod lambda_runtime_api;
pub mod lifecycle;
pub mod pipeline;
#[cfg(target_os = "linux")]
pub mod scale;
pub mod stack;

pub use emulator::{
    fake_image_manifest, moto_pythonpath, peak_rss_mib, Emulator, EmulatorKind, TEST_REGION,
};
