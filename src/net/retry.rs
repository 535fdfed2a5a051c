//! One retry policy for requests that got no usable answer: a bounded number of attempts with
//! exponential backoff and full jitter. Used by metadata HEADs, listings and the fill
//! service's chunk GETs (which retry through Pingora's hooks, with the same backoff).

use rand::Rng;
use std::future::Future;
use std::time::Duration;

/// Attempts of one origin request, the first included.
pub const ATTEMPTS: u32 = 3;

/// Exponential backoff with full jitter: attempt 1 waits up to 100 ms, 2 up to 200 ms, ...
pub fn backoff(attempt: u32) -> Duration {
    let cap_ms = 100u64 << attempt.saturating_sub(1).min(6);
    Duration::from_millis(rand::thread_rng().gen_range(cap_ms / 2..=cap_ms))
}

/// Runs `op` up to [`ATTEMPTS`] times while it fails with an error `retryable` accepts,
/// sleeping [`backoff`] between attempts. `op` is given the attempt number, from 1.
pub async fn with_retries<T, E, F, Fut>(retryable: impl Fn(&E) -> bool, mut op: F) -> Result<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match op(attempt).await {
            Err(e) if attempt < ATTEMPTS && retryable(&e) => {
                tokio::time::sleep(backoff(attempt)).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn backoff_grows_with_jitter() {
        for attempt in 1..5 {
            let d = backoff(attempt);
            let cap = Duration::from_millis(100 << (attempt - 1));
            assert!(d <= cap && d >= cap / 2, "{attempt}: {d:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_only_what_may_succeed_and_stops_at_the_cap() {
        let calls = AtomicU32::new(0);
        let r: Result<(), &str> = with_retries(
            |e| *e == "transient",
            |_| async {
                calls.fetch_add(1, Ordering::Relaxed);
                Err("transient")
            },
        )
        .await;
        assert_eq!(
            (r, calls.load(Ordering::Relaxed)),
            (Err("transient"), ATTEMPTS)
        );
        calls.store(0, Ordering::Relaxed);
        let r: Result<(), &str> = with_retries(
            |e| *e == "transient",
            |_| async {
                calls.fetch_add(1, Ordering::Relaxed);
                Err("final")
            },
        )
        .await;
        assert_eq!((r, calls.load(Ordering::Relaxed)), (Err("final"), 1));
        let r: Result<u32, &str> = with_retries(
            |_| true,
            |n| async move {
                if n < 2 {
                    Err("x")
                } else {
                    Ok(n)
                }
            },
        )
        .await;
        assert_eq!(r, Ok(2));
    }
}
