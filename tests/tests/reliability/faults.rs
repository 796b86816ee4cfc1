//! Faults through the proxy (microburst) and the SDK interceptor.
