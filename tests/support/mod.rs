//! Support shared by some end-to-end tests (not a test target itself).

pub mod browser;
