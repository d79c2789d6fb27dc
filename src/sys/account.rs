//! Users and groups from the system's databases (`getpwnam_r`, `getgrnam_r`, `getgrouplist`).
//! Resolved before any fork: none of these is async-signal-safe.

use std::ffi::CString;

/// A user's uid and primary gid, if the user exists.
pub fn user(name: &str) -> Option<(u32, u32)> {
    let c = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is plain data filled in by getpwnam_r; zeroed is a valid start value.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: valid pointers to a NUL-terminated name, a struct, a buffer of the length given,
    // and an out-pointer; all live across the call.
    let r = unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    (r == 0 && !out.is_null()).then_some((pw.pw_uid, pw.pw_gid))
}

/// What a login gives a user's processes: its name, home directory and shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// The user name (`USER`, `LOGNAME`).
    pub name: String,
    /// The home directory (`HOME`).
    pub home: String,
    /// The login shell (`SHELL`).
    pub shell: String,
}

/// The login entry of user `uid`, if it exists.
pub fn login(uid: u32) -> Option<Login> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is plain data filled in by getpwuid_r; zeroed is a valid start value.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: valid pointers to a struct, a buffer of the length given and an out-pointer,
    // all live across the call.
    let r = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if r != 0 || out.is_null() {
        return None;
    }
    let text = |p: *const libc::c_char| {
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: getpwuid_r filled `p` with a NUL-terminated string inside `buf`, which
            // lives until the end of this function.
            unsafe { std::ffi::CStr::from_ptr(p) }
                .to_string_lossy()
                .into_owned()
        }
    };
    Some(Login {
        name: text(pw.pw_name),
        home: text(pw.pw_dir),
        shell: text(pw.pw_shell),
    })
}

/// A group's gid, if the group exists.
pub fn group(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: group is plain data filled in by getgrnam_r.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as for getpwnam_r above.
    let r = unsafe { libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
    (r == 0 && !out.is_null()).then_some(gr.gr_gid)
}

/// The supplementary groups of `user` (including `gid`).
pub fn groups_of(user: &str, gid: u32) -> Vec<u32> {
    let Ok(c) = CString::new(user) else {
        return vec![gid];
    };
    let mut n: libc::c_int = 64;
    loop {
        let mut v: Vec<libc::gid_t> = vec![0; n as usize];
        let want = n;
        // SAFETY: a NUL-terminated name, a buffer of `n` gids and a pointer to its length.
        let r = unsafe { libc::getgrouplist(c.as_ptr(), gid, v.as_mut_ptr(), &mut n) };
        if r >= 0 {
            v.truncate(n as usize);
            return v;
        }
        if n <= want {
            n = want * 2;
        }
        if n > 65_536 {
            return vec![gid];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_exists_and_nonsense_does_not() {
        assert_eq!(user("root"), Some((0, 0)));
        assert_eq!(group("root"), Some(0));
        assert_eq!(user("no-such-user-broctld"), None);
        assert!(groups_of("root", 0).contains(&0));
        let root = login(0).expect("root's login");
        assert_eq!(root.name, "root");
        assert!(!root.home.is_empty());
    }
}
