//! The bounded pool for CPU-heavy work: bcrypt and sha256_crypt (CONVENTIONS 9).
//!
//! At most `workers` jobs run at once, on the identity runtime's blocking threads,
//! never on a proxy event loop; at most `queue` more wait. Beyond that a job is
//! refused at once, so a login storm turns into quick 503s instead of a growing
//! backlog that would hold connections and memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("too many password checks are waiting")]
    Busy,
    #[error("the password check did not finish")]
    Failed,
}

pub struct BlockingPool {
    runtime: tokio::runtime::Handle,
    running: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    limit: usize,
}

/// Counts one admitted job until dropped, even when the caller goes away.
struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl BlockingPool {
    pub fn new(runtime: tokio::runtime::Handle, workers: usize, queue: usize) -> Self {
        Self {
            runtime,
            running: Arc::new(Semaphore::new(workers.max(1))),
            waiting: Arc::new(AtomicUsize::new(0)),
            limit: workers.max(1) + queue,
        }
    }

    /// Jobs admitted and not yet finished.
    pub fn load(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolError> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(PoolError::Busy);
        }
        let admitted = Admitted(self.waiting.clone());
        let permit = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PoolError::Failed)?;
        let result = self
            .runtime
            .spawn_blocking(move || {
                let _permit = permit;
                job()
            })
            .await
            .map_err(|_| PoolError::Failed);
        drop(admitted);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_beyond_workers_and_queue_are_refused_at_once() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let pool = Arc::new(BlockingPool::new(runtime.handle().clone(), 1, 1));
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Arc::new(std::sync::Mutex::new(gate));
        runtime.block_on(async {
            let mut held = Vec::new();
            for _ in 0..2 {
                let pool = pool.clone();
                let gate = gate.clone();
                held.push(tokio::spawn(async move {
                    pool.run(move || gate.lock().map(|g| g.recv().is_ok()).unwrap_or(false))
                        .await
                }));
            }
            // Wait until both are admitted (one running, one queued).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while pool.load() < 2 && std::time::Instant::now() < deadline {
                tokio::task::yield_now().await;
            }
            assert_eq!(pool.run(|| true).await, Err(PoolError::Busy));
            for _ in 0..2 {
                release.send(()).expect("release");
            }
            for job in held {
                assert_eq!(job.await.expect("join"), Ok(true));
            }
            assert_eq!(pool.run(|| 7).await, Ok(7), "capacity returns");
        });
    }
}
