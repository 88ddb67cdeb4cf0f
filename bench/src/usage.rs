//! What the processes a bench drives cost: CPU time and resident memory, read from `/proc`
//! (Linux), so that a figure can be given per action beside a baseline's.

use anyhow::Context;

/// CPU seconds spent so far, split by who spent them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuTimes {
    /// The service under test (`None` when it runs inside the bench, as the bare baseline does).
    pub service: f64,
    /// Every process of the PostgreSQL server, those that have exited included.
    pub postgres: f64,
    /// This process: the load generator (and the bare baseline when it is the one measured).
    pub bench: f64,
}

impl CpuTimes {
    /// Reads the counters now; `service` is the pid of a service process, if one is measured.
    pub(crate) fn now(service: Option<u32>) -> anyhow::Result<Self> {
        let ticks = clock_ticks();
        let service = match service {
            Some(pid) => process_ticks(&stat_of(pid)?)?.0 as f64 / ticks,
            None => 0.0,
        };
        Ok(Self {
            service,
            postgres: postgres_ticks()? as f64 / ticks,
            bench: process_ticks(&stat_of(std::process::id())?)?.0 as f64 / ticks,
        })
    }

    /// What was spent between `earlier` and `self`.
    pub(crate) fn since(&self, earlier: &Self) -> Self {
        Self {
            service: self.service - earlier.service,
            postgres: self.postgres - earlier.postgres,
            bench: self.bench - earlier.bench,
        }
    }

    /// Milliseconds of CPU per unit of work for each part.
    pub(crate) fn per(&self, count: f64) -> Self {
        let per = |seconds: f64| seconds * 1000.0 / count.max(1.0);
        Self {
            service: per(self.service),
            postgres: per(self.postgres),
            bench: per(self.bench),
        }
    }
}

/// Resident memory of `pid` in MiB: now (`VmRSS`) and its peak so far (`VmHWM`).
pub(crate) fn resident_mib(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let line = status
            .lines()
            .find(|line| line.starts_with(name))
            .with_context(|| format!("{name} missing from /proc/{pid}/status"))?;
        let kib: f64 = line
            .split_whitespace()
            .nth(1)
            .context("a /proc status field without a value")?
            .parse()?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn stat_of(pid: impl std::fmt::Display) -> anyhow::Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))
}

/// (utime + stime, cutime + cstime) of a `/proc/<pid>/stat` line, in clock ticks: the second is
/// what the process's children that it has waited for spent.
fn process_ticks(stat: &str) -> anyhow::Result<(u64, u64)> {
    // pid (comm) state ppid …: comm may hold spaces, so count fields after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("a /proc stat line without its command")?
        .1
        .split_whitespace()
        .collect();
    // Fields 14–17 of proc(5), counted from `state` (field 3) here.
    let field = |n: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(n - 3)
            .context("a short /proc stat line")?
            .parse()?)
    };
    Ok((field(14)? + field(15)?, field(16)? + field(17)?))
}

/// Every PostgreSQL server process's CPU, plus what the postmaster's exited children (closed
/// connections' backends) spent.
fn postgres_ticks() -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head.ends_with("(postgres") {
            continue;
        }
        let (own, children) = process_ticks(&stat)?;
        total += own;
        // The postmaster (its parent is not a postgres process) waits for every backend.
        let parent = rest.split_whitespace().nth(1).unwrap_or("0");
        let parent_is_postgres = std::fs::read_to_string(format!("/proc/{parent}/stat"))
            .is_ok_and(|stat| stat.contains("(postgres)"));
        if !parent_is_postgres {
            total += children;
        }
    }
    Ok(total)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux this runs on).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_read_past_a_command_with_spaces() -> anyhow::Result<()> {
        let line = "4242 (tokio rt) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 4 0 1 2 3";
        assert_eq!(process_ticks(line)?, (300, 10));
        assert!(process_ticks("4242 no command").is_err());
        Ok(())
    }

    #[test]
    fn this_process_has_spent_cpu_and_holds_memory() -> anyhow::Result<()> {
        // Busy until the kernel has counted a tick of this process (or a deadline passes).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut spin = 0u64;
        let times = loop {
            spin = (0..1_000_000u64).fold(spin, |a, b| a.wrapping_add(b * b));
            let times = CpuTimes::now(Some(std::process::id()))?;
            if times.bench > 0.0 || std::time::Instant::now() > deadline {
                break times;
            }
        };
        assert!(spin > 0);
        assert!(times.bench > 0.0 && times.service > 0.0);
        assert!(times.postgres >= 0.0);
        let (rss, peak) = resident_mib(std::process::id())?;
        assert!(rss > 0.0 && peak >= rss);
        Ok(())
    }
}
