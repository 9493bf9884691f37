//! Keeps as few session threads reading `/dev/fuse` as the load needs.
//!
//! The kernel hands each request to the session thread that has waited longest, so with all of
//! them reading, one client's requests rotate through every thread: each lands on a thread
//! whose caches are cold, often on another CPU (a cross-CPU wakeup, costly in a VM). Measured
//! here with 5,000 Python file creates: ~2,500 files/s with 8 reading threads, ~3,300/s with 1.
//!
//! So, in the spirit of go-fuse and mountpoint-s3 (which start readers only as the load needs
//! them), one thread reads while that keeps up: a thread that finishes a request (its reply
//! already sent) while another thread is reading parks here instead of going back to read.
//! While requests are in progress a watchdog polls (never reads) a duplicate of the session's
//! descriptor every millisecond: when requests wait in the kernel's queue with no thread
//! reading, and either no request entered or completed since the last look (a concurrent
//! client behind a large commit, a transform, a lock wait) or the queue stayed that way for
//! three looks while fewer threads are unparked than there are CPUs (more requests than the
//! threads keep up with), it releases a parked thread, and for a while after that nobody
//! parks, so concurrent clients have every thread. Parked threads go back to reading once
//! requests stop for a moment or the connection ends, so an unmount finds them all.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::Stats;
use crate::util::lock;

/// How often the watchdog looks while requests are in progress.
const TICK: Duration = Duration::from_millis(1);
/// Without the queue to look at: ticks in which no request entered or completed while none was
/// reading that make a stall (a group commit holds the metadata connection for a millisecond or
/// two: requests waiting for it are not stalled).
const STALL_TICKS: u32 = 4;
/// Consecutive ticks with requests queued and none reading that release a thread even while
/// requests complete (a backlog one thread does not clear).
const BACKLOG_TICKS: u32 = 3;
/// After a stall, threads stop parking for this long (concurrent clients keep every thread).
const CONCURRENT_SPELL: Duration = Duration::from_millis(200);
/// A parked thread goes back to reading after this long without requests.
const PARK_IDLE: Duration = Duration::from_millis(100);
/// The watchdog sleeps until the next request after this long without one.
const WATCHDOG_IDLE: Duration = Duration::from_millis(50);

pub struct Governor {
    threads: usize,
    /// CPUs this process may run on.
    cpus: usize,
    /// Threads inside a request callback (not parked). How many are parked is counted in
    /// `stats.threads_parked`.
    busy: AtomicUsize,
    /// Bumped when a request enters and when it completes.
    progress: AtomicU64,
    /// Until when (ms since `start`) nobody parks.
    concurrent_until: AtomicU64,
    start: Instant,
    /// Wake-ups granted to parked threads.
    tokens: Mutex<usize>,
    unparked: Condvar,
    watchdog_asleep: AtomicBool,
    watchdog_wake: Condvar,
    stopped: AtomicBool,
    /// `/.space/stats`: threads parked now, and releases.
    stats: Arc<Stats>,
    /// A duplicate of the session's /dev/fuse descriptor, polled (never read) to see whether
    /// requests are waiting.
    queue: OnceLock<OwnedFd>,
}

/// Held while a request callback runs; dropping it (after the reply) may park the thread.
pub struct Busy<'a>(&'a Governor);

impl Governor {
    /// A governor for `threads` session threads; starts its watchdog if there are several.
    pub fn start(threads: usize, stats: Arc<Stats>) -> Arc<Governor> {
        let g = Arc::new(Governor {
            threads,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            busy: AtomicUsize::new(0),
            progress: AtomicU64::new(0),
            concurrent_until: AtomicU64::new(0),
            start: Instant::now(),
            tokens: Mutex::new(0),
            unparked: Condvar::new(),
            watchdog_asleep: AtomicBool::new(false),
            watchdog_wake: Condvar::new(),
            stopped: AtomicBool::new(false),
            stats,
            queue: OnceLock::new(),
        });
        if threads > 1 {
            let w = Arc::clone(&g);
            let started = std::thread::Builder::new()
                .name("space-governor".into())
                .spawn(move || w.watchdog());
            if let Err(e) = started {
                // Without a watchdog nobody may park: every thread keeps reading.
                log::warn!("spacefs: no thread governor ({e}); all session threads read");
                g.stopped.store(true, Ordering::SeqCst);
            }
        }
        g
    }

    /// Lets the watchdog see the kernel's request queue through a duplicate of the session's
    /// `/dev/fuse` descriptor: a parked thread is then released as soon as requests wait with
    /// no thread reading, and only then. Without it, the watchdog guesses from requests not
    /// completing for a few milliseconds.
    pub fn watch_queue(&self, session: BorrowedFd<'_>) {
        match session.try_clone_to_owned() {
            Ok(fd) => {
                let _ = self.queue.set(fd);
            }
            Err(e) => log::warn!("spacefs: cannot watch the request queue: {e}"),
        }
    }

    /// Marks the calling session thread busy with a request until the guard drops.
    pub fn enter(&self) -> Busy<'_> {
        self.busy.fetch_add(1, Ordering::SeqCst);
        self.progress.fetch_add(1, Ordering::SeqCst);
        if self.watchdog_asleep.load(Ordering::SeqCst) {
            let _t = lock(&self.tokens);
            self.watchdog_wake.notify_all();
        }
        Busy(self)
    }

    /// Ends the watchdog and releases every parked thread (the session is ending).
    pub fn stop(&self) {
        log::debug!(
            "spacefs: parked session threads released {} times",
            self.releases()
        );
        self.stopped.store(true, Ordering::SeqCst);
        let _t = lock(&self.tokens);
        self.unparked.notify_all();
        self.watchdog_wake.notify_all();
    }

    /// Times a parked thread was released to read.
    pub fn releases(&self) -> u64 {
        self.stats.threads_released.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn parked(&self) -> usize {
        self.stats.threads_parked.load(Ordering::SeqCst) as usize
    }

    /// Session threads neither busy nor parked: reading, or about to.
    fn reading(&self) -> usize {
        self.reading_with(self.parked())
    }

    fn reading_with(&self, parked: usize) -> usize {
        self.threads
            .saturating_sub(self.busy.load(Ordering::SeqCst))
            .saturating_sub(parked)
    }

    fn exit(&self) {
        self.busy.fetch_sub(1, Ordering::SeqCst);
        self.progress.fetch_add(1, Ordering::SeqCst);
        if self.threads < 2
            || self.stopped.load(Ordering::SeqCst)
            || self.now_ms() < self.concurrent_until.load(Ordering::SeqCst)
        {
            return;
        }
        if self.reserve_park() {
            self.park();
        }
    }

    /// Counts this thread as parked if another thread reads (`reading` still counts this
    /// one). A compare-and-swap, so that two threads finishing at once cannot both park
    /// leaving none to read.
    fn reserve_park(&self) -> bool {
        let parked = &self.stats.threads_parked;
        let mut now = parked.load(Ordering::SeqCst);
        loop {
            if self.reading_with(now as usize) < 2 {
                return false;
            }
            match parked.compare_exchange(now, now + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return true,
                Err(seen) => now = seen,
            }
        }
    }

    /// Waits (already counted as parked) for a release, the end of the session, or a pause
    /// in requests.
    fn park(&self) {
        let mut tokens = lock(&self.tokens);
        let mut seen = self.progress.load(Ordering::SeqCst);
        loop {
            if *tokens > 0 {
                *tokens -= 1;
                break;
            }
            if self.stopped.load(Ordering::SeqCst) {
                break;
            }
            let (t, timeout) = self
                .unparked
                .wait_timeout(tokens, PARK_IDLE)
                .unwrap_or_else(|p| p.into_inner());
            tokens = t;
            if timeout.timed_out() {
                // Requests stopped (none entered, completed or is in progress): read again.
                // A request in progress keeps the watchdog looking, and it releases threads.
                let now = self.progress.load(Ordering::SeqCst);
                if now == seen && self.busy.load(Ordering::SeqCst) == 0 {
                    break;
                }
                seen = now;
            }
        }
        self.stats.threads_parked.fetch_sub(1, Ordering::SeqCst);
    }

    fn unpark_one(&self) {
        let mut tokens = lock(&self.tokens);
        *tokens += 1;
        self.unparked.notify_one();
    }

    /// Whether requests wait in the kernel's queue (None: no descriptor to ask, or it failed).
    fn queue(&self) -> Option<Queue> {
        let fd = self.queue.get()?;
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd on a descriptor we own; a zero timeout never blocks.
        if unsafe { libc::poll(&mut p, 1, 0) } < 0 {
            return None;
        }
        Some(if p.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
            Queue::Gone
        } else if p.revents & libc::POLLIN != 0 {
            Queue::Waiting
        } else {
            Queue::Empty
        })
    }

    /// A thread is released to read; nobody parks for a while.
    fn release_one(&self) {
        self.stats.threads_released.fetch_add(1, Ordering::Relaxed);
        self.concurrent_until.store(
            self.now_ms() + CONCURRENT_SPELL.as_millis() as u64,
            Ordering::SeqCst,
        );
        self.unpark_one();
    }

    fn watchdog(&self) {
        let mut last = self.progress.load(Ordering::SeqCst);
        let mut idle_since = Instant::now();
        let mut still = 0;
        let mut backlog = 0;
        while !self.stopped.load(Ordering::SeqCst) {
            std::thread::sleep(TICK);
            let now = self.progress.load(Ordering::SeqCst);
            let busy = self.busy.load(Ordering::SeqCst);
            let unread = busy > 0 && self.reading() == 0 && self.parked() > 0;
            match self.queue() {
                Some(Queue::Gone) => {
                    self.stop();
                    return;
                }
                // Requests queued and nobody reading them, and either nothing entered or
                // completed for a tick (a concurrent client behind a slow request) or the
                // queue stayed so for several ticks (more requests than one thread keeps up
                // with). A single look is not enough: a sequential client's next request
                // waits some microseconds behind the previous file's asynchronous release.
                Some(Queue::Waiting) if unread => {
                    backlog += 1;
                    // More threads than CPUs only add switching to a backlog.
                    let active = self.threads - self.parked();
                    if now == last || (backlog >= BACKLOG_TICKS && active < self.cpus) {
                        backlog = 0;
                        self.release_one();
                    }
                }
                Some(_) => backlog = 0,
                // Without the queue to look at: guess from requests not completing.
                None => {
                    still = if now == last && unread { still + 1 } else { 0 };
                    if still >= STALL_TICKS {
                        still = 0;
                        self.release_one();
                    }
                }
            }
            if now != last || busy > 0 {
                idle_since = Instant::now();
            }
            last = now;
            if idle_since.elapsed() >= WATCHDOG_IDLE {
                let mut tokens = lock(&self.tokens);
                self.watchdog_asleep.store(true, Ordering::SeqCst);
                while self.progress.load(Ordering::SeqCst) == last
                    && !self.stopped.load(Ordering::SeqCst)
                {
                    tokens = self
                        .watchdog_wake
                        .wait(tokens)
                        .unwrap_or_else(|p| p.into_inner());
                }
                self.watchdog_asleep.store(false, Ordering::SeqCst);
                drop(tokens);
                last = self.progress.load(Ordering::SeqCst);
                idle_since = Instant::now();
            }
        }
    }
}

/// What a look at the kernel's request queue found.
enum Queue {
    Empty,
    Waiting,
    /// The connection ended (unmounted or aborted).
    Gone,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.exit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::fd::{AsFd, FromRawFd};

    /// Simulated session threads reading "requests" (how long each takes, 8 bytes) from a pipe
    /// standing in for /dev/fuse, handled under a governor that polls the pipe like the
    /// session's descriptor (or, `watch: false`, judges stalls by progress alone).
    struct Sim {
        g: Arc<Governor>,
        queue: Mutex<Option<File>>,
        done: Arc<AtomicUsize>,
        threads: Vec<std::thread::JoinHandle<()>>,
    }

    impl Sim {
        fn start(n: usize, watch: bool) -> Sim {
            let mut fds = [0; 2];
            // SAFETY: pipe2 fills two descriptors that we then own.
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            let (rx, tx) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
            let g = Governor::start(n, Arc::default());
            if watch {
                g.watch_queue(rx.as_fd());
            }
            let rx = Arc::new(rx);
            let done: Arc<AtomicUsize> = Arc::default();
            let threads = (0..n)
                .map(|_| {
                    let (g, rx, done) = (Arc::clone(&g), Arc::clone(&rx), Arc::clone(&done));
                    std::thread::spawn(move || {
                        let mut req = [0u8; 8];
                        // Records are written whole (8 bytes < PIPE_BUF), so a read gets one.
                        while (&*rx).read_exact(&mut req).is_ok() {
                            let _busy = g.enter();
                            std::thread::sleep(Duration::from_micros(u64::from_le_bytes(req)));
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            Sim {
                g,
                queue: Mutex::new(Some(tx)),
                done,
                threads,
            }
        }

        fn push(&self, d: Duration) {
            let micros = d.as_micros() as u64;
            lock(&self.queue)
                .as_ref()
                .unwrap()
                .write_all(&micros.to_le_bytes())
                .unwrap();
        }

        fn done(&self) -> usize {
            self.done.load(Ordering::SeqCst)
        }

        fn wait_done(&self, n: usize) {
            while self.done() < n {
                std::thread::sleep(Duration::from_micros(20));
            }
        }

        /// Quick requests one at a time until all threads but one park (a loaded machine may
        /// stall one long enough to release a thread for a while); how many are parked.
        fn settle(&self) -> usize {
            let t0 = Instant::now();
            self.sequential(100);
            while self.parked() + 1 < self.threads.len() && t0.elapsed() < Duration::from_secs(10) {
                self.sequential(20);
            }
            self.parked()
        }

        /// `n` quick requests, one at a time.
        fn sequential(&self, n: usize) {
            for _ in 0..n {
                let before = self.done();
                self.push(Duration::from_micros(20));
                self.wait_done(before + 1);
            }
        }

        fn parked(&self) -> usize {
            self.g.parked()
        }

        /// Closes the queue (the "unmount"): every thread, parked or not, must end.
        fn finish(self) {
            lock(&self.queue).take();
            let t0 = Instant::now();
            for t in self.threads {
                t.join().unwrap();
            }
            assert!(
                t0.elapsed() < PARK_IDLE * 5,
                "threads took {:?} to end",
                t0.elapsed()
            );
            self.g.stop();
        }
    }

    #[test]
    fn quick_requests_park_all_but_one_reader() {
        for watch in [true, false] {
            let sim = Sim::start(4, watch);
            assert_eq!(sim.settle(), 3, "one-at-a-time requests leave one reader");
            if watch {
                // (Judged by progress alone, a thread descheduled for 4 ms is a stall.)
                assert_eq!(sim.g.releases(), 0, "no release for a sequential client");
            }
            sim.finish();
        }
    }

    #[test]
    fn a_slow_request_releases_a_parked_thread() {
        for watch in [true, false] {
            let sim = Sim::start(4, watch);
            assert_eq!(sim.settle(), 3);
            let done = sim.done();
            // One request that takes a second, then a quick one behind it: the quick one
            // must not wait for the slow one.
            sim.push(Duration::from_secs(1));
            std::thread::sleep(Duration::from_millis(20));
            let t0 = Instant::now();
            sim.push(Duration::from_micros(20));
            sim.wait_done(done + 1);
            assert!(
                t0.elapsed() < Duration::from_millis(500),
                "the quick request waited {:?} behind the slow one (watch: {watch})",
                t0.elapsed()
            );
            assert!(sim.g.releases() >= 1);
            sim.wait_done(done + 2);
            sim.finish();
        }
    }

    #[test]
    fn a_backlog_releases_threads_up_to_the_cpus() {
        let sim = Sim::start(4, true);
        assert_eq!(sim.settle(), 3);
        // Requests arrive faster than one thread serves them, and every one completes
        // promptly (no stall): only the backlog can release threads.
        let t0 = Instant::now();
        let mut pushed = 0;
        while t0.elapsed() < Duration::from_millis(300) {
            for _ in 0..4 {
                sim.push(Duration::from_micros(300));
            }
            pushed += 4;
            std::thread::sleep(Duration::from_micros(600));
        }
        let released = sim.g.releases();
        sim.wait_done(pushed);
        if sim.g.cpus > 1 {
            assert!(released >= 1, "a backlog released no thread");
        } else {
            assert_eq!(released, 0, "one CPU: a backlog releases nobody");
        }
        sim.finish();
    }

    #[test]
    fn threads_finishing_together_leave_a_reader() {
        let sim = Sim::start(4, true);
        sim.settle();
        let mut worst = Duration::ZERO;
        for _ in 0..200 {
            // Four requests at once: the threads finish together and decide together.
            let before = sim.done();
            for _ in 0..4 {
                sim.push(Duration::from_micros(200));
            }
            sim.wait_done(before + 4);
            let t0 = Instant::now();
            sim.push(Duration::ZERO);
            sim.wait_done(before + 5);
            worst = worst.max(t0.elapsed());
        }
        assert!(
            worst < PARK_IDLE / 2,
            "a request waited {worst:?}: every thread had parked"
        );
        sim.finish();
    }

    #[test]
    fn parked_threads_return_to_reading_when_requests_stop() {
        let sim = Sim::start(3, false);
        assert_eq!(sim.settle(), 2);
        std::thread::sleep(PARK_IDLE * 3);
        assert_eq!(sim.parked(), 0);
        sim.finish();
    }
}
