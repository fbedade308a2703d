//! Raw bindings to `csrc/dist_shim.cpp`. Every function returns NULL on success or a malloc'ed
//! error message to be released with `splade_dist_free_error`; none of them unwinds.
#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int};
use torch_sys::C_tensor;

#[repr(C)]
pub struct splade_dist_store {
    _private: [u8; 0],
}

#[repr(C)]
pub struct splade_dist_group {
    _private: [u8; 0],
}

extern "C" {
    pub fn splade_dist_free_error(err: *mut c_char);
    pub fn splade_dist_store_new(
        host: *const c_char,
        port: u16,
        is_master: c_int,
        world_size: c_int,
        timeout_ms: i64,
        out: *mut *mut splade_dist_store,
    ) -> *mut c_char;
    pub fn splade_dist_store_port(s: *mut splade_dist_store, port: *mut u16) -> *mut c_char;
    pub fn splade_dist_store_free(s: *mut splade_dist_store);
    pub fn splade_dist_group_new(
        s: *mut splade_dist_store,
        prefix: *const c_char,
        backend: c_int,
        rank: c_int,
        world_size: c_int,
        timeout_ms: i64,
        gloo_host: *const c_char,
        out: *mut *mut splade_dist_group,
    ) -> *mut c_char;
    pub fn splade_dist_group_free(g: *mut splade_dist_group);
    pub fn splade_dist_all_reduce_sum(g: *mut splade_dist_group, tensors: *const *mut C_tensor, n: usize) -> *mut c_char;
    pub fn splade_dist_all_gather(
        g: *mut splade_dist_group,
        input: *mut C_tensor,
        outputs: *const *mut C_tensor,
        world_size: usize,
    ) -> *mut c_char;
    pub fn splade_dist_broadcast(g: *mut splade_dist_group, tensor: *mut C_tensor, root: c_int) -> *mut c_char;
    pub fn splade_dist_barrier(g: *mut splade_dist_group) -> *mut c_char;
}

/// Turns the shim's return value into `Err(message)` (freeing the C string) or `Ok(())`.
pub fn check(err: *mut c_char) -> Result<(), String> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-NULL return is a NUL-terminated string malloc'ed by the shim, released once here.
    let msg = unsafe { std::ffi::CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { splade_dist_free_error(err) };
    Err(msg)
}
