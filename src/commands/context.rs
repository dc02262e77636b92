//! `meridian context`: named sets of addresses, CA, token file and project in the CLI's config file.

use crate::cli::{ContextCommand, OutputFormat};
use crate::client::ClientError;
use crate::context;
use crate::output;

pub fn run(cmd: ContextCommand) -> Result<(), ClientError> {
    match cmd {
        ContextCommand::Add {
            name,
            addr,
            cacert,
            token_file,
            project,
            make_current,
        } => {
            let ctx = context::new_context(
                &addr,
                cacert.as_deref(),
                token_file.as_deref(),
                project.as_deref(),
            )?;
            let path = context::add(&name, ctx, make_current)?;
            output::note(&format!("context {name} saved in {}", path.display()));
            Ok(())
        }
        ContextCommand::Use { name } => {
            context::use_context(&name)?;
            output::note(&format!("now using context {name}"));
            Ok(())
        }
        ContextCommand::Remove { name } => {
            context::remove(&name)?;
            output::note(&format!("context {name} removed"));
            Ok(())
        }
        ContextCommand::List { output: format } => {
            let file = context::list()?;
            match format {
                OutputFormat::Json => output::json(&serde_json::json!({
                    "current": file.current,
                    "contexts": file.contexts,
                })),
                OutputFormat::Table => {
                    let rows: Vec<Vec<String>> = file
                        .contexts
                        .iter()
                        .map(|(name, c)| {
                            let current = file.current.as_deref() == Some(name.as_str());
                            vec![
                                if current { "*" } else { "" }.to_owned(),
                                name.clone(),
                                c.addr.join(","),
                                c.project.clone().unwrap_or_else(|| "-".into()),
                                c.cacert
                                    .as_ref()
                                    .map_or_else(|| "-".into(), |p| p.display().to_string()),
                            ]
                        })
                        .collect();
                    let headers =
                        ["CURRENT", "NAME", "ADDR", "PROJECT", "CACERT"].map(String::from);
                    output::table(&headers, &rows);
                }
            }
            Ok(())
        }
    }
}
