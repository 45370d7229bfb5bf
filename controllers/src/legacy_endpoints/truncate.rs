//! Over-capacity truncation of legacy Endpoints.

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointSubset};

fn count(v: &Option<Vec<EndpointAddress>>) -> usize {
    v.as_ref().map_or(0, Vec::len)
}

/// Keeps at most `max` addresses over all subsets, in place; returns whether anything was
/// dropped.
///
/// Ready addresses are kept first. If the ready ones alone fit, every ready address is kept
/// and the not-ready ones are cut to the remaining room; otherwise all not-ready addresses go
/// and the ready ones are cut to `max`. The cut is proportional: subset by subset, in order,
/// each keeps `ceil(its share of the total × room)`, bounded by what is left of the room, so
/// the last subsets absorb the rounding. Within a subset the first addresses (in the sorted
/// order) are kept, which makes the choice stable from one sync to the next.
pub(crate) fn truncate(subsets: &mut [EndpointSubset], max: usize) -> bool {
    let ready: usize = subsets.iter().map(|s| count(&s.addresses)).sum();
    let not_ready: usize = subsets.iter().map(|s| count(&s.not_ready_addresses)).sum();
    if ready + not_ready <= max {
        return false;
    }
    let truncate_ready = ready > max;
    let (room, total) = if truncate_ready {
        (max, ready)
    } else {
        (max - ready, not_ready)
    };
    let mut left = room;
    for s in subsets.iter_mut() {
        let list = if truncate_ready {
            &mut s.addresses
        } else {
            &mut s.not_ready_addresses
        };
        let n = count(list);
        // Same floating-point expression as upstream, so the per-subset numbers match exactly.
        let share = ((n as f64 / total as f64) * room as f64).ceil() as usize;
        let keep = share.min(left).min(n);
        if let Some(v) = list.as_mut() {
            v.truncate(keep);
        }
        left -= keep;
        if truncate_ready {
            s.not_ready_addresses = None;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: usize) -> Option<Vec<EndpointAddress>> {
        Some(
            (0..n)
                .map(|i| EndpointAddress {
                    ip: format!("10.0.{}.{}", i / 256, i % 256),
                    ..Default::default()
                })
                .collect(),
        )
    }

    fn subsets(ready: &[usize], not_ready: &[usize]) -> Vec<EndpointSubset> {
        ready
            .iter()
            .zip(not_ready)
            .map(|(r, n)| EndpointSubset {
                addresses: addrs(*r),
                not_ready_addresses: addrs(*n),
                ports: None,
            })
            .collect()
    }

    fn counts(s: &[EndpointSubset]) -> (Vec<usize>, Vec<usize>) {
        (
            s.iter().map(|s| count(&s.addresses)).collect(),
            s.iter().map(|s| count(&s.not_ready_addresses)).collect(),
        )
    }

    #[test]
    fn upstream_vectors() {
        // (ready, not ready) -> (ready, not ready, truncated)
        type Row = (Vec<usize>, Vec<usize>, Vec<usize>, Vec<usize>, bool);
        let cases: Vec<Row> = vec![
            (
                vec![90, 110, 50, 10, 20],
                vec![101, 200, 200, 201, 298],
                vec![90, 110, 50, 10, 20],
                vec![73, 144, 144, 145, 214],
                true,
            ),
            (
                vec![205, 400, 402, 400, 693],
                vec![100, 200, 200, 200, 300],
                vec![98, 191, 192, 191, 328],
                vec![0, 0, 0, 0, 0],
                true,
            ),
            (
                vec![50, 100, 100, 100, 100],
                vec![50, 100, 100, 100, 100],
                vec![50, 100, 100, 100, 100],
                vec![50, 100, 100, 100, 100],
                false,
            ),
            (vec![100; 5], vec![100; 5], vec![100; 5], vec![100; 5], false),
            (vec![997], vec![4], vec![997], vec![3], true),
            (vec![1000], vec![10], vec![1000], vec![0], true),
            (vec![1001], vec![0], vec![1000], vec![0], true),
        ];
        for (r, n, want_r, want_n, want_trunc) in cases {
            let mut s = subsets(&r, &n);
            let truncated = truncate(&mut s, 1000);
            assert_eq!(truncated, want_trunc, "{r:?}/{n:?}");
            assert_eq!(counts(&s), (want_r, want_n), "{r:?}/{n:?}");
            let total: usize = s
                .iter()
                .map(|s| count(&s.addresses) + count(&s.not_ready_addresses))
                .sum();
            assert!(total <= 1000);
        }
    }

    #[test]
    fn keeps_the_first_addresses() {
        let mut s = subsets(&[1001], &[0]);
        truncate(&mut s, 1000);
        let v = s[0].addresses.as_ref().unwrap();
        assert_eq!(v[0].ip, "10.0.0.0");
        assert_eq!(v[999].ip, "10.0.3.231");
    }
}
