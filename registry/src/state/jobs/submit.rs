//! Submitting and cancelling jobs: `SubmitJob` (validation, quotas, the secrets a job may name) and
//! `CancelJob`, and which secret bindings select a workload.
use std::collections::BTreeSet;

use super::super::tenancy::validate_id;
use super::super::{Applied, DomainError, Outcome, RegistryState};
use super::*;

/// What `Op::SubmitJob` asks for.
pub struct Submission<'a> {
    pub id: &'a str,
    pub project_id: &'a str,
    pub spec: &'a JobSpec,
    pub principal_id: Option<&'a str>,
}
impl RegistryState {
    pub fn submit_job(
        &mut self,
        at: u64,
        actor: &crate::state::Actor,
        submission: Submission<'_>,
    ) -> Result<Applied, DomainError> {
        let Submission {
            id,
            project_id,
            spec,
            principal_id,
        } = submission;
        validate_id("id", id)?;
        if self.tenancy.project(project_id).is_none() {
            return Err(DomainError::not_found("project", project_id));
        }
        if self.jobs.get(id).is_some() {
            return Err(DomainError::exists("job", id));
        }
        spec.validate()?;
        match principal_id {
            Some(principal) => self.check_job_secrets(actor, id, project_id, spec, principal)?,
            // A command from before workload identities: replayed under the rule it was accepted by.
            None => {
                for name in spec.secrets.values() {
                    let secret = self
                        .project_scope(project_id)
                        .secret(name)
                        .ok_or_else(|| DomainError::not_found("secret", name))?;
                    if !secret_binds_job(secret, id, &spec.name) {
                        return Err(DomainError::FailedPrecondition(format!(
                            "secret {name} is not bound to this job"
                        )));
                    }
                }
            }
        }
        self.check_submit_quota(project_id, spec)?;
        let job = JobRecord {
            id: id.to_owned(),
            project_id: project_id.to_owned(),
            spec: spec.clone(),
            state: JobState::Pending,
            attempts: Vec::new(),
            pending_reason: None,
            cancel_requested: false,
            prefer_region: None,
            created_by: actor.name.clone(),
            principal_id: principal_id.map(str::to_owned),
            created_at: at,
            updated_at: at,
            finished_at: None,
        };
        self.jobs.insert(job.clone());
        let detail = if spec.name.is_empty() {
            "pending".to_owned()
        } else {
            format!("name={}", spec.name)
        };
        Ok(Applied::new(Outcome::Jobs(JobOutcome::Job { job }), detail))
    }

    /// The rules for a job's secrets when it has a workload identity: the identity is the submitter
    /// itself; naming secrets needs `use-secrets` in the project (checked here against the acting key, as
    /// the API did before proposing); and every secret named must exist and be bound to the principal (and,
    /// for a binding narrowed to `job:PATTERN`, to a job of that name). A job's name alone never selects a
    /// secret.
    fn check_job_secrets(
        &self,
        actor: &crate::state::Actor,
        id: &str,
        project_id: &str,
        spec: &JobSpec,
        principal: &str,
    ) -> Result<(), DomainError> {
        validate_id("principal_id", principal)?;
        if actor
            .principal_id
            .as_deref()
            .is_some_and(|acting| acting != principal)
        {
            return Err(DomainError::PermissionDenied(
                "a job's workload identity is the principal that submits it".to_owned(),
            ));
        }
        if spec.secrets.is_empty() {
            return Ok(());
        }
        if let Some(caller) = crate::authz::caller_of(self, actor) {
            let action = crate::authz::Action::UseSecrets;
            if crate::authz::authorize_caller(self, &caller, Some(project_id), action).is_err() {
                return Err(DomainError::PermissionDenied(
                    "naming secrets in a job needs use-secrets (the secret-user or project-admin role)"
                        .to_owned(),
                ));
            }
        }
        for name in spec.secrets.values() {
            let secret = self
                .project_scope(project_id)
                .secret(name)
                .ok_or_else(|| DomainError::not_found("secret", name))?;
            if !secret_binds_workload(secret, principal, id, &spec.name) {
                return Err(DomainError::FailedPrecondition(format!(
                    "secret {name} is not bound to principal {principal}; a project-admin binds it with \
                     principal:{principal} or principal:{principal}/job:<name pattern>"
                )));
            }
        }
        Ok(())
    }

    pub fn cancel_job(
        &mut self,
        at: u64,
        project_id: &str,
        id: &str,
    ) -> Result<Applied, DomainError> {
        if self.job(project_id, id).is_none() {
            return Err(DomainError::not_found("job", id));
        }
        let changed = self.jobs.update(id, |job| match job.state {
            JobState::Pending => {
                job.state = JobState::Cancelled;
                job.pending_reason = None;
                job.updated_at = at;
                job.finished_at = Some(at);
                Ok(("pending -> cancelled", BTreeSet::new()))
            }
            JobState::Scheduled | JobState::Running if job.cancel_requested => {
                Ok(("cancel already requested", BTreeSet::new()))
            }
            JobState::Scheduled | JobState::Running => {
                job.cancel_requested = true;
                job.updated_at = at;
                let nodes: BTreeSet<String> = job
                    .current_replicas()
                    .iter()
                    .filter(|a| a.outcome.is_none())
                    .map(|a| a.node.clone())
                    .collect();
                Ok(("cancel requested", nodes))
            }
            state => Err(DomainError::FailedPrecondition(format!(
                "job {id} is already {}",
                state.as_str()
            ))),
        });
        let (detail, nodes) = changed.unwrap_or_else(|| Err(DomainError::not_found("job", id)))?;
        for node in &nodes {
            self.bump_assign_version(node);
        }
        let Some(job) = self.jobs.get(id).cloned() else {
            return Err(DomainError::not_found("job", id));
        };
        Ok(Applied::new(Outcome::Jobs(JobOutcome::Job { job }), detail))
    }
}

/// Whether one of the secret's bindings names the workload: the job's principal (its workload identity,
/// the principal that submitted it), and when the binding is narrowed to `job:PATTERN`, a job whose name or
/// id matches. Bindings from before workload identities ([`SecretBinding::Legacy`](crate::state::SecretBinding))
/// select nothing.
pub fn secret_binds_workload(
    secret: &crate::state::Secret,
    principal_id: &str,
    job_id: &str,
    job_name: &str,
) -> bool {
    secret
        .bindings
        .iter()
        .any(|b| match crate::state::SecretBinding::parse(b) {
            crate::state::SecretBinding::Workload {
                principal_id: bound,
                job,
            } => {
                bound == principal_id
                    && job.is_none_or(|pattern| {
                        glob_matches(pattern, job_id)
                            || (!job_name.is_empty() && glob_matches(pattern, job_name))
                    })
            }
            crate::state::SecretBinding::Legacy => false,
        })
}

/// The rule of builds before workload identities, kept only to replay their `SubmitJob` commands exactly
/// (those carry no principal): one of the secret's selectors is `job:PATTERN` where PATTERN matches the
/// job's name or id. Never used to decide a new submission or a release.
pub fn secret_binds_job(secret: &crate::state::Secret, job_id: &str, job_name: &str) -> bool {
    secret.bindings.iter().any(|b| {
        b.strip_prefix("job:").is_some_and(|pattern| {
            glob_matches(pattern, job_id)
                || (!job_name.is_empty() && glob_matches(pattern, job_name))
        })
    })
}

/// `*` matches any run of characters (also none); everything else matches itself.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return text.is_empty();
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*` at all: the whole text must have been the pattern.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod secret_binding_tests {
    use super::glob_matches;

    #[test]
    fn globs_match_like_shell_stars() {
        for (pattern, text, expected) in [
            ("*", "anything", true),
            ("*", "", true),
            ("train", "train", true),
            ("train", "trainer", false),
            ("train-*", "train-7", true),
            ("train-*", "eval-7", false),
            ("*-gpu", "resnet-gpu", true),
            ("*-gpu", "resnet-cpu", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXcYYb", false),
            ("ab*ab", "ab", false),
            ("ab*ab", "abab", true),
        ] {
            assert_eq!(glob_matches(pattern, text), expected, "{pattern} vs {text}");
        }
    }
}
