//! Finding which of the caller's projects holds an object named by id, so `meridian key revoke ID` or
//! `meridian job status ID` works without `--project` when the object lives in another project the caller
//! can see.
//!
//! Only when no project was chosen (no `--project`, `MERIDIAN_PROJECT` or context project) and the object is
//! not in the key's own project: the CLI then asks each project the caller can list for the object, with the
//! caller's own key, so the server's rules decide as for any request (a project the caller cannot read
//! answers 404 like a missing one). Exactly one holder: the command runs there and says so on stderr.
//! Several (names are per project, e.g. secrets): the error names them. None: the original "not found".

use coordinator::api::dto::ProjectView;
use serde_json::Value;

use crate::client::{ApiClient, ClientError};
use crate::output;

use super::list_all_as;

/// Most projects searched; past that the caller is asked to name the project.
const MAX_PROJECTS: usize = 100;

/// A client acting in the project that holds the object at `lookup` (a GET path, e.g. `/v1/keys/ID`);
/// `what` names it in messages (`key ID`).
pub(crate) async fn locate(
    api: ApiClient,
    what: &str,
    lookup: &str,
) -> Result<ApiClient, ClientError> {
    locate_read(api, what, lookup).await.map(|(api, _)| api)
}

/// [`locate`], with the object as the lookup read it (for a command that only shows it).
pub(crate) async fn locate_read(
    api: ApiClient,
    what: &str,
    lookup: &str,
) -> Result<(ApiClient, Value), ClientError> {
    let missing = match api.get(lookup).await {
        Ok(found) => return Ok((api, found)),
        Err(ClientError::NotFound(message)) if api.project().is_none() => message,
        Err(e) => return Err(e),
    };
    let projects: Vec<ProjectView> = list_all_as(&api, "/v1/projects").await?;
    if projects.len() > MAX_PROJECTS {
        return Err(ClientError::NotFound(format!(
            "{missing} (in your key's project; pass --project to look in another)"
        )));
    }
    let mut holders: Vec<(String, ApiClient, Value)> = Vec::new();
    for project in projects {
        let scoped = api.in_project(&project.id);
        match scoped.get(lookup).await {
            Ok(found) => holders.push((project.name, scoped, found)),
            Err(ClientError::NotFound(_) | ClientError::Denied(_)) => {}
            Err(e) => return Err(e),
        }
    }
    match holders.len() {
        0 => Err(ClientError::NotFound(missing)),
        1 => {
            let (name, scoped, found) = holders.remove(0);
            output::note(&format!("({what} is in project {name})"));
            Ok((scoped, found))
        }
        _ => {
            let mut names: Vec<&str> = holders.iter().map(|(n, ..)| n.as_str()).collect();
            names.sort_unstable();
            Err(ClientError::Usage(format!(
                "{what} exists in projects {}: pass --project NAME to pick one",
                names.join(", ")
            )))
        }
    }
}
