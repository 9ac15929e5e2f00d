//! The models, run in libtorch through `tch`. Knows nothing of HTTP or of the store.
//!
//! For now: choosing the device the models will run on.

mod device;

pub use device::{DeviceSpec, ResolvedDevice};
