//! `meridian certs …`: local CA and certificate operations (no server involved).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;

use crate::cli::{CertsCommand, OutputFormat, RoleArg};
use crate::output;

pub fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Init {
            trust_domain,
            out,
            days,
            force,
        } => {
            let cert = out.join("ca.pem");
            let key = out.join("ca.key");
            if !force && (cert.exists() || key.exists()) {
                bail!(
                    "{} already holds a CA; pass --force to replace it",
                    out.display()
                );
            }
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let ca = certs::CertificateAuthority::generate(
                &trust_domain,
                Duration::from_secs(days * 86_400),
            )?;
            let (cert, key) = ca.write_to(&out)?;
            eprintln!(
                "wrote {} and {} (0600) for trust domain {trust_domain}",
                cert.display(),
                key.display()
            );
            Ok(())
        }
        CertsCommand::Issue {
            ca_dir,
            role,
            name,
            region,
            cluster,
            dns,
            ips,
            hours,
            out,
        } => {
            let ca =
                certs::CertificateAuthority::load(&ca_dir.join("ca.pem"), &ca_dir.join("ca.key"))
                    .with_context(|| format!("loading the CA from {}", ca_dir.display()))?;
            let td = ca.trust_domain().to_string();
            let need = |v: &Option<String>, flag: &str| -> anyhow::Result<String> {
                v.clone()
                    .with_context(|| format!("--{flag} is required for this role"))
            };
            let identity = match role {
                RoleArg::Coordinator => certs::Identity::coordinator(&td, &name)?,
                RoleArg::Operator => certs::Identity::operator(&td, &name)?,
                RoleArg::Gateway => {
                    certs::Identity::gateway(&td, &need(&region, "region")?, &name)?
                }
                RoleArg::Agent => certs::Identity::agent(
                    &td,
                    &need(&region, "region")?,
                    &need(&cluster, "cluster")?,
                    &name,
                )?,
            };
            let mut req =
                certs::LeafRequest::new(identity.clone(), Duration::from_secs(hours * 3600));
            req.dns_names = dns;
            req.ip_addresses = ips;
            let leaf = ca.issue(&req)?;
            let (cert, key) = (with_ext(&out, "pem"), with_ext(&out, "key"));
            if let Some(parent) = cert.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            leaf.write(&cert, &key)?;
            eprintln!(
                "issued {identity} -> {} and {} (0600)",
                cert.display(),
                key.display()
            );
            Ok(())
        }
        CertsCommand::Inspect {
            file,
            output: format,
        } => {
            let pem = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let info = certs::inspect_pem(&pem)?;
            let value = serde_json::to_value(&info).context("encoding certificate info")?;
            match format {
                OutputFormat::Json => output::json(&value),
                OutputFormat::Table => output::object(format, &value),
            }
            Ok(())
        }
        CertsCommand::MasterKey => {
            let line = coordinator::crypto::MasterKeyring::generate_line(&mut rand::rngs::OsRng);
            output::object(OutputFormat::Table, &json!(line.as_str()));
            Ok(())
        }
    }
}

fn with_ext(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}
