//! A user's key permissions, merged from all its roles into sorted, disjoint key ranges: a
//! request is permitted when the ranges cover it entirely (etcd's interval tree `Contains`), a
//! single key when a range contains it.

use oxcd_proto::authpb::{permission::Type, Permission, Role};

/// A half-open key interval; `end == None` is unbounded (etcd's `range_end = "\0"`).
type Interval = (Vec<u8>, Option<Vec<u8>>);

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Ranges(Vec<Interval>);

impl Ranges {
    fn merged(mut intervals: Vec<Interval>) -> Ranges {
        intervals.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<Interval> = Vec::with_capacity(intervals.len());
        for (start, end) in intervals {
            if let Some(last) = out.last_mut() {
                // Touching intervals join too: [a, b) and [b, c) cover [a, c).
                let joins = match &last.1 {
                    None => true,
                    Some(last_end) => start <= *last_end,
                };
                if joins {
                    last.1 = match (last.1.take(), end) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        _ => None,
                    };
                    continue;
                }
            }
            out.push((start, end));
        }
        Ranges(out)
    }

    /// Whether `[start, end)` lies inside one merged range (disjoint ranges never touch, so a
    /// covered interval is inside exactly one).
    fn covers(&self, start: &[u8], end: Option<&[u8]>) -> bool {
        if end.is_some_and(|e| e <= start) {
            return false;
        }
        let i = self.0.partition_point(|(s, _)| s.as_slice() <= start);
        let Some((_, range_end)) = i.checked_sub(1).map(|i| &self.0[i]) else {
            return false;
        };
        match (range_end, end) {
            (None, _) => true,
            (Some(re), Some(e)) => re.as_slice() >= e && re.as_slice() > start,
            (Some(_), None) => false,
        }
    }
}

/// What one user may read and write.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct UserPerms {
    read: Ranges,
    write: Ranges,
}

/// The interval a permission or a request names: no `range_end` is the key alone,
/// `range_end = "\0"` everything from the key on.
fn interval(key: &[u8], range_end: &[u8]) -> Interval {
    match range_end {
        [] => (key.to_vec(), Some(successor(key))),
        [0] => (key.to_vec(), None),
        end => (key.to_vec(), Some(end.to_vec())),
    }
}

/// The smallest key after `key`.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

impl UserPerms {
    pub(super) fn of_roles<'a>(roles: impl IntoIterator<Item = &'a Role>) -> UserPerms {
        let (mut read, mut write) = (Vec::new(), Vec::new());
        for perm in roles.into_iter().flat_map(|r| &r.key_permission) {
            let iv = interval(&perm.key, &perm.range_end);
            match perm.perm_type() {
                Type::Read => read.push(iv),
                Type::Write => write.push(iv),
                Type::Readwrite => {
                    read.push(iv.clone());
                    write.push(iv);
                }
            }
        }
        UserPerms {
            read: Ranges::merged(read),
            write: Ranges::merged(write),
        }
    }

    pub(super) fn may_read(&self, key: &[u8], range_end: &[u8]) -> bool {
        let (start, end) = interval(key, range_end);
        self.read.covers(&start, end.as_deref())
    }

    pub(super) fn may_write(&self, key: &[u8], range_end: &[u8]) -> bool {
        let (start, end) = interval(key, range_end);
        self.write.covers(&start, end.as_deref())
    }
}

/// etcd's rule for a permission's range: a key, and either no end, an end after the key, or
/// `"\0"` (open-ended).
pub(super) fn valid_permission(perm: &Permission) -> bool {
    !perm.key.is_empty()
        && (perm.range_end.is_empty() || perm.range_end == [0] || perm.key < perm.range_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(perms: &[(Type, &[u8], &[u8])]) -> Role {
        Role {
            name: b"r".to_vec(),
            key_permission: perms
                .iter()
                .map(|(t, k, e)| Permission {
                    perm_type: *t as i32,
                    key: k.to_vec(),
                    range_end: e.to_vec(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_single_key_permission_grants_that_key_only() {
        let p = UserPerms::of_roles([&role(&[(Type::Read, b"a", b"")])]);
        assert!(p.may_read(b"a", b""));
        assert!(!p.may_read(b"a\0", b""));
        assert!(!p.may_write(b"a", b""));
        // A range from the key is more than the key (the 2026 watch advisory's bypass).
        assert!(!p.may_read(b"a", b"\0"));
        assert!(!p.may_read(b"a", b"b"));
        assert!(p.may_read(b"a", b"a\0"));
    }

    #[test]
    fn ranges_from_several_roles_join_when_they_touch() {
        let r1 = role(&[(Type::Readwrite, b"a", b"c")]);
        let r2 = role(&[(Type::Read, b"c", b"e"), (Type::Write, b"x", b"\0")]);
        let p = UserPerms::of_roles([&r1, &r2]);
        assert!(p.may_read(b"a", b"e"));
        assert!(p.may_read(b"b", b"d"));
        assert!(!p.may_read(b"a", b"e\0"));
        assert!(!p.may_write(b"a", b"d"));
        assert!(p.may_write(b"b", b""));
        assert!(p.may_write(b"x", b"\0"));
        assert!(p.may_write(b"zzz", b""));
        assert!(!p.may_read(b"x", b""));
    }

    #[test]
    fn gaps_are_not_covered() {
        let p = UserPerms::of_roles([&role(&[(Type::Read, b"a", b"b"), (Type::Read, b"c", b"d")])]);
        assert!(!p.may_read(b"a", b"d"));
        assert!(!p.may_read(b"b", b""));
        assert!(p.may_read(b"c", b"c\xff"));
        // An empty or inverted range is never permitted, as in etcd.
        assert!(!p.may_read(b"c", b"c"));
        assert!(!p.may_read(b"c", b"a"));
    }

    #[test]
    fn open_ended_permissions_absorb_what_follows() {
        let p = UserPerms::of_roles([&role(&[
            (Type::Read, b"m", b"\0"),
            (Type::Read, b"p", b"q"),
        ])]);
        assert!(p.may_read(b"m", b"\0"));
        assert!(p.may_read(b"zz", b""));
        assert!(!p.may_read(b"l", b"\0"));
    }

    #[test]
    fn permission_ranges_are_checked_as_etcd_checks_them() {
        let perm = |k: &[u8], e: &[u8]| Permission {
            perm_type: 0,
            key: k.to_vec(),
            range_end: e.to_vec(),
        };
        assert!(valid_permission(&perm(b"a", b"")));
        assert!(valid_permission(&perm(b"a", b"\0")));
        assert!(valid_permission(&perm(b"a", b"b")));
        assert!(!valid_permission(&perm(b"", b"")));
        assert!(!valid_permission(&perm(b"b", b"a")));
        assert!(!valid_permission(&perm(b"a", b"a")));
    }
}
