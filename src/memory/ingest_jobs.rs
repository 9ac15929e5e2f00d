//! The book of background ingestion jobs: what `/v1/jobs/{id}` reports, kept in memory
//! for progress and in the store for restarts.
//!
//! A job's record holds the document's text until the job ends, so that a server
//! stopped (or killed) half-way starts it again from the beginning when it comes back:
//! nothing of the document was written yet (its chunks go to the store in one atomic
//! write at the end), so starting over is safe. Finished jobs stay reportable for
//! [`JOB_RETENTION_MS`], then their records go.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use ulid::Ulid;

use super::service::MemoryError;
use crate::store::records::{now_ms, ulid_from_bytes, IngestJob, JobState};
use crate::store::{Store, StoreError};

/// Finished jobs are forgotten after this long (they only report on past work).
pub const JOB_RETENTION_MS: i64 = 60 * 60 * 1000;

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
}

/// The jobs of this process, mirrored in the store's `jobs` tree.
#[derive(Clone)]
pub struct JobBook {
    store: Arc<Store>,
    jobs: Arc<Mutex<HashMap<Ulid, Job>>>,
}

impl JobBook {
    pub fn new(store: Arc<Store>) -> Self {
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
        self.forget_expired()?;
        self.store.put_job(&record)?;
        Ok(self.admit(&record, content_hash))
    }

    /// Puts a stored record in the book (at open, or when resuming after a restart) and
    /// returns its view; a resumed job starts over from chunk 0.
    pub fn admit(&self, record: &IngestJob, content_hash: [u8; 32]) -> JobView {
        let (tenant, user_id) =
            record.scope.as_ref().map(|s| (s.tenant.clone(), s.user_id.clone())).unwrap_or_default();
        let status = match record.state() {
            JobState::JobDone => JobStatus::Done,
            JobState::JobFailed => JobStatus::Failed,
            JobState::JobPending | JobState::Unspecified => JobStatus::Pending,
        };
        let view = JobView {
            id: ulid_from_bytes(&record.id).unwrap_or_default(),
            status,
            done: if status == JobStatus::Done { record.total as usize } else { 0 },
            total: record.total as usize,
            document_id: ulid_from_bytes(&record.document_id).unwrap_or_default(),
            error: (!record.error.is_empty()).then(|| record.error.clone()),
        };
        let finished_at_ms = (!status.is_live()).then_some(record.finished_at_ms);
        let job = Job { view: view.clone(), tenant, user_id, content_hash, finished_at_ms };
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

    /// Ends a job: its record keeps the outcome and drops the text (blocking).
    pub fn finish(&self, id: Ulid, outcome: Result<(), String>) -> Result<(), StoreError> {
        let finished = now_ms();
        if let Some(job) = self.jobs.lock().get_mut(&id) {
            job.finished_at_ms = Some(finished);
            match &outcome {
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
        let Some(mut record) = self.store.get_job(id)? else { return Ok(()) };
        record.text = String::new();
        record.finished_at_ms = finished;
        match outcome {
            Ok(()) => record.set_state(JobState::JobDone),
            Err(e) => {
                record.set_state(JobState::JobFailed);
                record.error = e;
            }
        }
        self.store.put_job(&record)
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
