//! Figures (median and spread of several runs), the machine they were measured on, and the
//! report file whose sections each bench replaces.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

/// Several runs of one measurement.
#[derive(Debug, Clone)]
pub struct Figure(pub Vec<f64>);

impl Figure {
    pub fn median(&self) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        match sorted.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        }
    }

    /// Each run's value divided by the baseline's of the same run: on a noisy host a steadier
    /// ratio than one median over the other.
    pub fn per_run(&self, baseline: &Figure) -> Figure {
        Figure(
            self.0
                .iter()
                .zip(&baseline.0)
                .map(|(value, base)| value / base)
                .collect(),
        )
    }

    /// `median (min–max)`.
    pub fn show(&self, decimals: usize) -> String {
        let min = self.0.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!(
            "{:.decimals$} ({min:.decimals$}–{max:.decimals$})",
            self.median()
        )
    }
}

/// A table of whole-log jobs in events/s beside both reading baselines: one batch after
/// another (`reads`), and one batch ahead of the consumer (`aheads`); each ratio is the median
/// (and spread) of the runs' own ratios, every run's job against that run's baselines.
pub fn rates_beside_reading(
    markdown: &mut String,
    reads: &Figure,
    aheads: &Figure,
    jobs: &[(&str, &Figure)],
) {
    let _ = writeln!(
        markdown,
        "| | events/s | ratio to reading | ratio to reading ahead |"
    );
    let _ = writeln!(markdown, "| --- | ---: | ---: | ---: |");
    let rows = [
        ("reading the log (baseline)", reads),
        (
            "reading it one batch ahead (`Ledger::read_ahead`, second baseline)",
            aheads,
        ),
    ];
    for (label, figure) in rows.iter().chain(jobs) {
        let _ = writeln!(
            markdown,
            "| {label} | {} | {} | {} |",
            figure.show(0),
            figure.per_run(reads).show(2),
            figure.per_run(aheads).show(2)
        );
    }
}

/// A report section: its id and its Markdown.
pub struct Section {
    pub id: &'static str,
    pub markdown: String,
}

/// A line describing the machine: cores, memory, CPU model, date.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("MemTotal:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!(
        "{} · {cores} cores ({cpu}) · {memory_gib:.0} GiB",
        chrono::Utc::now().format("%Y-%m-%d")
    )
}

const HEADER: &str = "# Performance\n\nMeasured by `make bench` (`countersign-bench`). Every figure is the median of several \
runs with their range in parentheses, beside a baseline measured in the same run on the same \
machine and database; compare ratios, not absolute numbers, across machines.\n";

/// Replaces (or appends) the section between `<!-- bench:ID -->` and `<!-- /bench:ID -->`.
pub fn write_section(path: &Path, section: &Section) -> anyhow::Result<()> {
    let current = std::fs::read_to_string(path).unwrap_or_else(|_| HEADER.to_owned());
    let start = format!("<!-- bench:{} -->", section.id);
    let end = format!("<!-- /bench:{} -->", section.id);
    let mut block = String::new();
    let _ = write!(block, "{start}\n{}\n{end}", section.markdown.trim_end());
    let updated = match (current.find(&start), current.find(&end)) {
        (Some(from), Some(to)) if from < to => {
            format!("{}{block}{}", &current[..from], &current[to + end.len()..])
        }
        _ => format!("{}\n{block}\n", current.trim_end()),
    };
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}

/// A progress line on standard error.
pub fn progress(message: &str) {
    let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("{message}\n"));
}
