//! (driver being written)
