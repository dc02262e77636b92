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
            max_days,
            out,
        } => {
            let lifetime = leaf_lifetime(hours, max_days)?;
            let names_hosts = !dns.is_empty() || !ips.is_empty();
            if names_hosts && !matches!(role, RoleArg::Coordinator | RoleArg::Gateway) {
                bail!(
                    "--dns/--ip: only coordinator and gateway certificates may name hosts; \
                     agents and operators are identified by their URI SAN alone"
                );
            }
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
            let mut req = certs::LeafRequest::new(identity.clone(), lifetime);
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
        CertsCommand::DenyList(_) => {
            bail!("the deny-list commands talk to the admin API and are run elsewhere")
        }
        CertsCommand::MasterKey => {
            let line = coordinator::crypto::MasterKeyring::generate_line(&mut rand::rngs::OsRng);
            output::object(OutputFormat::Table, &json!(line.as_str()));
            Ok(())
        }
    }
}

/// The lifetime `--hours` asks for, within `--max-days`, which is itself within the hard cap.
fn leaf_lifetime(hours: u64, max_days: u64) -> anyhow::Result<Duration> {
    let cap_days = certs::LEAF_LIFETIME_HARD_CAP.as_secs() / 86_400;
    if max_days == 0 || max_days > cap_days {
        bail!("--max-days must be between 1 and {cap_days}, got {max_days}");
    }
    if hours == 0 {
        bail!("--hours must be at least 1");
    }
    let max_hours = max_days * 24;
    if hours > max_hours {
        bail!(
            "--hours {hours} exceeds the maximum lifetime of {max_days} days ({max_hours} hours); \
             issue a shorter certificate and rotate it, or raise --max-days (at most {cap_days})"
        );
    }
    Ok(Duration::from_secs(hours * 3600))
}

fn with_ext(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_stay_within_the_maximum_and_the_hard_cap() {
        assert_eq!(leaf_lifetime(24, 397).unwrap(), Duration::from_secs(86_400));
        assert!(leaf_lifetime(397 * 24, 397).is_ok());
        let err = leaf_lifetime(397 * 24 + 1, 397).unwrap_err().to_string();
        assert!(
            err.contains("exceeds the maximum lifetime of 397 days"),
            "{err}"
        );
        assert!(leaf_lifetime(500 * 24, 600).is_ok());
        let err = leaf_lifetime(24, 826).unwrap_err().to_string();
        assert!(err.contains("between 1 and 825"), "{err}");
        assert!(leaf_lifetime(0, 397).is_err());
        assert!(leaf_lifetime(24, 0).is_err());
    }
}
