//! The book of background ingestion jobs: what `/v1/jobs/{id}` reports, kept in memory
//! for progress and in the store for restarts.
//!
//! A job's record holds the document's text until the job ends, so that a server
//! stopped (or killed) half-way starts it again from the beginning when it comes back:
//! nothing of the document was written yet (its chunks go to the store in one atomic
//! write at the end), so starting over is safe. A job is started at most
//! [`MAX_ATTEMPTS`] times: one that brings the server down every time is marked failed
//! instead of being retried forever. Finished jobs stay reportable for
//! [`JOB_RETENTION_MS`], then their records go.
//!
//! Cancelling (erasing the user, deleting the document) removes the job's record; the
//! job's final write is guarded on that record being there, so a cancelled job never
//! writes anything, and its flag stops the embedding at the next batch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use ulid::Ulid;

use super::service::MemoryError;
use crate::store::records::{now_ms, ulid_from_bytes, IngestJob, JobState};
use crate::store::{MemoryStore, Precondition, StoreError, WriteBatch};

/// Finished jobs are forgotten after this long (they only report on past work).
pub const JOB_RETENTION_MS: i64 = 60 * 60 * 1000;
/// Runs a job gets (the first, then resumptions after restarts) before it is given up.
pub const MAX_ATTEMPTS: u32 = 3;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Pending,
    Running,
    Done,
    Failed,
}

impl JobStatus {
    /// The name used in the API.
    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
        }
    }

    fn is_live(self) -> bool {
        matches!(self, JobStatus::Pending | JobStatus::Running)
    }
}

/// The status a stored state stands for: a job not finished is pending (it starts again
/// after a restart); only the book knows which are running now.
impl From<JobState> for JobStatus {
    fn from(state: JobState) -> Self {
        match state {
            JobState::JobDone => JobStatus::Done,
            JobState::JobFailed => JobStatus::Failed,
            JobState::JobPending | JobState::Unspecified => JobStatus::Pending,
        }
    }
}

/// A snapshot of a job, as `/v1/jobs/{id}` reports it.
#[derive(Debug, Clone)]
pub struct JobView {
    pub id: Ulid,
    pub status: JobStatus,
    /// Chunks embedded so far.
    pub done: usize,
    pub total: usize,
    pub document_id: Ulid,
    pub error: Option<String>,
}

/// A job with what is needed to scope it and to recognise a repeated upload.
struct Job {
    view: JobView,
    tenant: String,
    user_id: String,
    content_hash: [u8; 32],
    finished_at_ms: Option<i64>,
    /// Set when the job is cancelled; the embedding loop checks it between batches.
    cancelled: Arc<AtomicBool>,
}

/// The jobs of this process, mirrored in the store's `jobs` tree.
#[derive(Clone)]
pub struct JobBook {
    store: Arc<dyn MemoryStore>,
    jobs: Arc<Mutex<HashMap<Ulid, Job>>>,
}

impl JobBook {
    pub fn new(store: Arc<dyn MemoryStore>) -> Self {
        Self { store, jobs: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// Records a new job, durably, before it runs (blocking: call it off the async
    /// workers). `record` carries the document; its id and state are set here.
    pub fn open(&self, mut record: IngestJob, total: usize, content_hash: [u8; 32]) -> Result<JobView, StoreError> {
        let id = Ulid::new();
        record.id = id.to_bytes().to_vec().into();
        record.set_state(JobState::JobPending);
        record.total = total as u32;
        record.created_at_ms = now_ms();
        record.attempts = 1;
        self.forget_expired()?;
        self.store.put_job(&record)?;
        Ok(self.admit(&record, content_hash))
    }

    /// Puts a stored record in the book (at open, or when resuming after a restart) and
    /// returns its view; a resumed job starts over from chunk 0.
    pub fn admit(&self, record: &IngestJob, content_hash: [u8; 32]) -> JobView {
        let (tenant, user_id) =
            record.scope.as_ref().map(|s| (s.tenant.clone(), s.user_id.clone())).unwrap_or_default();
        let status = JobStatus::from(record.state());
        let view = JobView {
            id: ulid_from_bytes(&record.id).unwrap_or_default(),
            status,
            done: if status == JobStatus::Done { record.total as usize } else { 0 },
            total: record.total as usize,
            document_id: ulid_from_bytes(&record.document_id).unwrap_or_default(),
            error: (!record.error.is_empty()).then(|| record.error.clone()),
        };
        let finished_at_ms = (!status.is_live()).then_some(record.finished_at_ms);
        let cancelled = Arc::new(AtomicBool::new(false));
        let job = Job { view: view.clone(), tenant, user_id, content_hash, finished_at_ms, cancelled };
        self.jobs.lock().insert(view.id, job);
        view
    }

    /// Marks a job running, with `done` chunks embedded.
    pub fn progress(&self, id: Ulid, done: usize) {
        if let Some(job) = self.jobs.lock().get_mut(&id) {
            job.view.status = JobStatus::Running;
            job.view.done = done;
        }
    }

    /// Whether the job was cancelled (it should stop).
    pub fn is_cancelled(&self, id: Ulid) -> bool {
        self.jobs.lock().get(&id).is_none_or(|j| j.cancelled.load(Ordering::Relaxed))
    }

    /// Cancels the live jobs of one user (`None`: of any user) of a tenant, or only the
    /// one writing `document`, and forgets them: their records are the store's to
    /// remove (erase, document delete), which is what makes their final write fail.
    pub fn cancel(&self, tenant: &str, user_id: Option<&str>, document: Option<Ulid>) {
        self.jobs.lock().retain(|_, j| {
            let hit = j.tenant == tenant
                && user_id.is_none_or(|u| j.user_id == u)
                && document.is_none_or(|d| j.view.document_id == d);
            if hit {
                j.cancelled.store(true, Ordering::Relaxed);
            }
            !hit
        });
    }

    /// The record of a job ending with `outcome`: the text dropped, the state set.
    pub fn finished_record(&self, id: Ulid, outcome: Result<(), String>) -> Result<Option<IngestJob>, StoreError> {
        let Some(mut record) = self.store.get_job(id)? else { return Ok(None) };
        record.text = String::new();
        record.finished_at_ms = now_ms();
        match outcome {
            Ok(()) => record.set_state(JobState::JobDone),
            Err(e) => {
                record.set_state(JobState::JobFailed);
                record.error = e;
            }
        }
        Ok(Some(record))
    }

    /// Ends a job: its record keeps the outcome and drops the text (blocking). A job
    /// cancelled meanwhile stays gone.
    pub fn finish(&self, id: Ulid, outcome: Result<(), String>) -> Result<(), StoreError> {
        self.mark(id, &outcome);
        let Some(record) = self.finished_record(id, outcome)? else { return Ok(()) };
        let batch =
            WriteBatch { preconditions: vec![Precondition::JobPending(id)], job: Some(record), ..Default::default() };
        match self.store.write(batch) {
            Ok(_) | Err(StoreError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Marks a job ended in the book.
    pub fn mark(&self, id: Ulid, outcome: &Result<(), String>) {
        if let Some(job) = self.jobs.lock().get_mut(&id) {
            job.finished_at_ms = Some(now_ms());
            match outcome {
                Ok(()) => {
                    job.view.status = JobStatus::Done;
                    job.view.done = job.view.total;
                }
                Err(e) => {
                    job.view.status = JobStatus::Failed;
                    job.view.error = Some(e.clone());
                }
            }
        }
    }

    /// Counts one more run of a resumed job, durably, before it runs; `false` when it
    /// has had its [`MAX_ATTEMPTS`] (blocking).
    pub fn count_attempt(&self, record: &mut IngestJob) -> Result<bool, StoreError> {
        if record.attempts >= MAX_ATTEMPTS {
            return Ok(false);
        }
        record.attempts += 1;
        self.store.put_job(record)?;
        Ok(true)
    }

    /// A job of this tenant; another tenant's is reported as absent.
    pub fn get(&self, tenant: &str, id: &str) -> Result<JobView, MemoryError> {
        let missing = || MemoryError::NotFound(format!("job {id}"));
        let ulid: Ulid = id.parse().map_err(|_| missing())?;
        let jobs = self.jobs.lock();
        jobs.get(&ulid).filter(|j| j.tenant == tenant).map(|j| j.view.clone()).ok_or_else(missing)
    }

    /// The unfinished job ingesting this text for this tenant and user, if any.
    pub fn find_live(&self, tenant: &str, user_id: &str, content_hash: [u8; 32]) -> Option<JobView> {
        self.jobs.lock().values().find_map(|j| {
            (j.view.status.is_live() && j.tenant == tenant && j.user_id == user_id && j.content_hash == content_hash)
                .then(|| j.view.clone())
        })
    }

    /// Drops finished jobs past their retention, from the book and the store (blocking).
    pub fn forget_expired(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let expired = |finished: i64| now - finished >= JOB_RETENTION_MS;
        self.jobs.lock().retain(|_, j| j.finished_at_ms.is_none_or(|t| !expired(t)));
        for record in self.store.list_jobs()? {
            if record.state() != JobState::JobPending && expired(record.finished_at_ms) {
                if let Some(id) = ulid_from_bytes(&record.id) {
                    self.store.delete_job(id)?;
                }
            }
        }
        Ok(())
    }
}
