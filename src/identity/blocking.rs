//! The bounded pool for CPU-heavy work: bcrypt and sha256_crypt (CONVENTIONS 9).
//!
//! `workers` threads of the pool's own run the jobs, never a proxy event loop; at
//! most `queue` more jobs wait. Beyond that a job is refused at once, so a login
//! storm turns into quick 503s instead of a growing backlog that would hold
//! connections and memory.
//!
//! With [`PasswordPriority::Background`] (the default) the threads are scheduled
//! below everything else (Linux `SCHED_IDLE`): a proxy thread that has work takes
//! the CPU from a running hash at once, so password checks use the CPU proxied
//! traffic leaves and a login storm does not delay it.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

pub use crate::config::PasswordPriority;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("too many password checks are waiting")]
    Busy,
    #[error("the password check did not finish")]
    Failed,
}

type Job = Box<dyn FnOnce() + Send>;

pub struct BlockingPool {
    jobs: mpsc::Sender<Job>,
    waiting: Arc<AtomicUsize>,
    limit: usize,
}

/// Counts one admitted job until it has run (or can no longer run).
struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl BlockingPool {
    /// Starts `workers` threads (at least one). They stop when the pool is dropped,
    /// after the job they are running.
    pub fn new(workers: usize, queue: usize, priority: PasswordPriority) -> std::io::Result<Self> {
        let workers = workers.max(1);
        let (jobs, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..workers {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name("portcullis-password".into())
                .spawn(move || work(&receiver, priority))?;
        }
        Ok(Self {
            jobs,
            waiting: Arc::new(AtomicUsize::new(0)),
            limit: workers + queue,
        })
    }

    /// Jobs admitted and not yet finished.
    pub fn load(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Runs `job` on a pool thread. A caller that goes away while its job runs does not
    /// free its place before the job has finished: the bound is on work, not on
    /// waiting callers. A queued job whose caller went away is skipped.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolError> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(PoolError::Busy);
        }
        let admitted = Admitted(self.waiting.clone());
        let (done, result) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                // Nobody waits for it any more (the client went away while it was
                // queued): skip the hashing.
                if done.is_closed() {
                    return;
                }
                // A panicking job fails its caller, not the thread.
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(job));
                // The place is free before the caller hears of it.
                drop(admitted);
                if let Ok(value) = outcome {
                    let _ = done.send(value);
                }
            }))
            .map_err(|_| PoolError::Failed)?;
        result.await.map_err(|_| PoolError::Failed)
    }
}

/// A pool thread: takes jobs until the pool is gone.
fn work(jobs: &Mutex<mpsc::Receiver<Job>>, priority: PasswordPriority) {
    if priority == PasswordPriority::Background
        && let Err(error) = schedule_in_background()
    {
        tracing::warn!(
            %error,
            "password checks could not be scheduled below proxied traffic; they run at normal priority"
        );
    }
    loop {
        let job = match jobs.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(mpsc::RecvError) => return,
        }
    }
}

/// Puts the calling thread below every normal thread: Linux's `SCHED_IDLE`.
#[cfg(target_os = "linux")]
fn schedule_in_background() -> Result<(), thread_priority::Error> {
    use thread_priority::unix::{
        NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
        thread_native_id,
    };
    set_thread_priority_and_policy(
        thread_native_id(),
        thread_priority::ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    )
}

/// Elsewhere the lowest priority the platform offers.
#[cfg(not(target_os = "linux"))]
fn schedule_in_background() -> Result<(), thread_priority::Error> {
    thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn jobs_beyond_workers_and_queue_are_refused_at_once() {
        let pool = Arc::new(BlockingPool::new(1, 1, PasswordPriority::Normal).expect("pool"));
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        runtime().block_on(async {
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

    #[test]
    fn a_caller_that_goes_away_keeps_its_place_until_the_job_ran() {
        let pool = BlockingPool::new(1, 0, PasswordPriority::Normal).expect("pool");
        let (release, gate) = std::sync::mpsc::channel::<()>();
        runtime().block_on(async {
            let abandoned = pool.run(move || gate.recv().is_ok());
            // Polled once (admitted and sent), then dropped.
            assert!(
                tokio::time::timeout(std::time::Duration::from_millis(20), abandoned)
                    .await
                    .is_err()
            );
            assert_eq!(pool.load(), 1, "the job still runs");
            assert_eq!(pool.run(|| 1).await, Err(PoolError::Busy));
            release.send(()).expect("release");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while pool.load() > 0 && std::time::Instant::now() < deadline {
                tokio::task::yield_now().await;
            }
            assert_eq!(pool.run(|| 2).await, Ok(2));
        });
    }

    #[test]
    fn a_queued_job_whose_caller_went_away_is_skipped() {
        let pool = Arc::new(BlockingPool::new(1, 1, PasswordPriority::Normal).expect("pool"));
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let ran = Arc::new(AtomicUsize::new(0));
        runtime().block_on(async {
            let running = pool.clone();
            let first = tokio::spawn(async move { running.run(move || gate.recv().is_ok()).await });
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while pool.load() < 1 && std::time::Instant::now() < deadline {
                tokio::task::yield_now().await;
            }
            let counter = ran.clone();
            let abandoned = pool.run(move || counter.fetch_add(1, Ordering::AcqRel));
            assert!(
                tokio::time::timeout(std::time::Duration::from_millis(20), abandoned)
                    .await
                    .is_err()
            );
            release.send(()).expect("release");
            assert_eq!(first.await.expect("join"), Ok(true));
            // The worker takes jobs in order: once this one ran, the abandoned one
            // was taken before it.
            assert_eq!(pool.run(|| 4).await, Ok(4));
            assert_eq!(
                ran.load(Ordering::Acquire),
                0,
                "the abandoned job did not run"
            );
            assert_eq!(pool.load(), 0);
        });
    }

    #[test]
    fn a_panicking_job_fails_its_caller_and_the_pool_goes_on() {
        let pool = BlockingPool::new(1, 0, PasswordPriority::Normal).expect("pool");
        runtime().block_on(async {
            let failed = pool.run(|| -> u8 { panic!("a job that panics") }).await;
            assert_eq!(failed, Err(PoolError::Failed));
            assert_eq!(pool.load(), 0);
            assert_eq!(pool.run(|| 3).await, Ok(3));
        });
    }

    /// The scheduling policy the pool's threads run jobs with.
    #[cfg(target_os = "linux")]
    fn policy_of_jobs(priority: PasswordPriority) -> thread_priority::unix::ThreadSchedulePolicy {
        let pool = BlockingPool::new(2, 0, priority).expect("pool");
        let policy = runtime().block_on(pool.run(thread_priority::unix::thread_schedule_policy));
        policy.expect("the job ran").expect("policy readable")
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn background_password_checks_are_scheduled_below_proxied_traffic() {
        use thread_priority::unix::{
            NormalThreadSchedulePolicy::{Idle, Other},
            ThreadSchedulePolicy::Normal,
            thread_schedule_policy,
        };
        assert_eq!(policy_of_jobs(PasswordPriority::Background), Normal(Idle));
        assert_eq!(policy_of_jobs(PasswordPriority::Normal), Normal(Other));
        // The pool changed only its own threads.
        assert_eq!(thread_schedule_policy().expect("policy"), Normal(Other));
    }
}
