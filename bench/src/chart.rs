//! SVG line charts for the report: one series per system or configuration, drawn on linear or
//! logarithmic axes. Text is written as SVG `<text>` and laid out with plotters' built-in size
//! estimate, so no font is loaded and the file is the same on every machine; the viewer renders
//! it in its own sans-serif.

use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Width and height of every chart, in SVG pixels.
const SIZE: (u32, u32) = (640, 400);
/// A generic family, resolved by whoever views the SVG.
const FONT: &str = "sans-serif";
/// Okabe–Ito: distinguishable with the common colour-vision deficiencies. A series keeps the
/// colour of its position even when an earlier series has nothing to draw.
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(0, 0, 0),
];

/// A line chart: each series is drawn as a line through its points, sorted by x, with a marker
/// on each point.
#[derive(Debug, Clone, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    pub series: Vec<Series>,
}

/// One named line. Points that cannot be drawn (NaN, infinite, or not positive on a logarithmic
/// axis) are left out; a series left with no point is left out of the chart and its legend.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Writes `chart` as an SVG file at `path`. A chart with nothing to draw still gets a file, with
/// its title and "no data".
pub fn line_chart(path: &Path, chart: &Chart) -> Result<()> {
    let svg = render(chart).with_context(|| format!("drawing chart {:?}", chart.title))?;
    std::fs::write(path, svg).with_context(|| format!("writing chart {}", path.display()))
}

/// A markdown image whose link is `svg_path` relative to `doc_dir`, the directory of the
/// document that embeds it: `![alt](perf/submit-scaling.svg)` for `docs/perf/submit-scaling.svg`
/// seen from `docs`. The paths are compared as written (no file needs to exist); when they cannot
/// be related, the link is `svg_path` itself.
pub fn markdown_image(doc_dir: &Path, svg_path: &Path, alt: &str) -> String {
    let link = relative_link(doc_dir, svg_path);
    let link = if link.contains([' ', '(', ')', '<', '>']) {
        format!("<{}>", link.replace('<', "%3C").replace('>', "%3E"))
    } else {
        link
    };
    let mut escaped_alt = String::with_capacity(alt.len());
    for c in alt.chars() {
        if matches!(c, '[' | ']' | '\\') {
            escaped_alt.push('\\');
        }
        escaped_alt.push(if c == '\n' { ' ' } else { c });
    }
    format!("![{escaped_alt}]({link})")
}

/// A series reduced to what can be drawn.
struct Plotted<'a> {
    name: &'a str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

fn render(chart: &Chart) -> Result<String> {
    let plotted: Vec<Plotted<'_>> = chart
        .series
        .iter()
        .zip(PALETTE.iter().cycle())
        .filter_map(|(series, &color)| {
            let mut points: Vec<(f64, f64)> = series
                .points
                .iter()
                .copied()
                .filter(|&(x, y)| drawable(x, chart.log_x) && drawable(y, chart.log_y))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            (!points.is_empty()).then_some(Plotted {
                name: &series.name,
                color,
                points,
            })
        })
        .collect();

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        match extent(&plotted) {
            None => draw_no_data(&root, chart)?,
            Some((xs, ys)) => {
                let x = AxisRange::new(xs, chart.log_x, false)?;
                let y = AxisRange::new(ys, chart.log_y, true)?;
                match (x, y) {
                    (AxisRange::Linear(x), AxisRange::Linear(y)) => {
                        draw(&root, chart, &plotted, x, y)?
                    }
                    (AxisRange::Linear(x), AxisRange::Log(y)) => {
                        draw(&root, chart, &plotted, x, y.log_scale())?
                    }
                    (AxisRange::Log(x), AxisRange::Linear(y)) => {
                        draw(&root, chart, &plotted, x.log_scale(), y)?
                    }
                    (AxisRange::Log(x), AxisRange::Log(y)) => {
                        draw(&root, chart, &plotted, x.log_scale(), y.log_scale())?
                    }
                }
            }
        }
        root.present()?;
    }
    Ok(svg)
}

fn drawable(value: f64, log: bool) -> bool {
    value.is_finite() && (!log || value > 0.0)
}

/// The smallest and largest x and y over every point, or `None` when there is no point.
fn extent(plotted: &[Plotted<'_>]) -> Option<((f64, f64), (f64, f64))> {
    let mut points = plotted.iter().flat_map(|s| s.points.iter().copied());
    let (x0, y0) = points.next()?;
    Some(
        points.fold(((x0, x0), (y0, y0)), |((xl, xh), (yl, yh)), (x, y)| {
            ((xl.min(x), xh.max(x)), (yl.min(y), yh.max(y)))
        }),
    )
}

/// The range an axis shows, before plotters turns it into a coordinate.
enum AxisRange {
    Linear(Range<f64>),
    Log(Range<f64>),
}

impl AxisRange {
    /// `from_zero` starts a linear axis at zero when no value is negative, so a y axis of
    /// throughputs does not exaggerate small differences.
    fn new((min, max): (f64, f64), log: bool, from_zero: bool) -> Result<Self> {
        let range = if log {
            Self::Log(log_range(min, max))
        } else {
            Self::Linear(linear_range(min, max, from_zero))
        };
        // Plotters' tick search loops until it has enough ticks: on a range whose ends or ratio
        // are not finite, or beyond what f64 resolves, it never stops.
        let fits = match &range {
            Self::Linear(r) => r.start.is_finite() && r.end.is_finite() && r.start < r.end,
            Self::Log(r) => {
                r.start >= MIN_LOG && r.end.is_finite() && (r.end / r.start).log10() <= MAX_DECADES
            }
        };
        if !fits {
            bail!("values from {min} to {max} are too far apart or too extreme to chart");
        }
        Ok(range)
    }
}

/// Below this a linear range counts as flat: plotters' tick steps would underflow.
const MIN_SPAN: f64 = 1e-200;
/// The smallest value a logarithmic axis starts at, for the same reason.
const MIN_LOG: f64 = 1e-200;
/// The most powers of ten a logarithmic axis spans.
const MAX_DECADES: f64 = 200.0;

/// Pads the data by 5% on each side; a flat range (one point, all values equal, or differences
/// below what f64 resolves at that magnitude) gets room around it so the axis still has ticks.
fn linear_range(min: f64, max: f64, from_zero: bool) -> Range<f64> {
    let (mut lo, mut hi) = (min, max);
    if from_zero && lo >= 0.0 {
        lo = 0.0;
    }
    let magnitude = lo.abs().max(hi.abs());
    let span = hi - lo;
    if span <= magnitude * 1e-9 || span < MIN_SPAN {
        let pad = if magnitude < MIN_SPAN {
            1.0
        } else {
            magnitude * 0.1
        };
        lo -= pad;
        hi += pad;
    } else {
        let pad = span * 0.05;
        if !(from_zero && lo == 0.0) {
            lo -= pad;
        }
        hi += pad;
    }
    lo..hi
}

/// Whole decades around the data: plotters puts a labelled tick on each power of ten, and a range
/// inside one decade would have none. The bounds are nudged outwards so that rounding in the
/// logarithm cannot drop the first or last tick.
fn log_range(min: f64, max: f64) -> Range<f64> {
    let lo_exp = min.log10().floor();
    let mut hi_exp = max.log10().ceil();
    if hi_exp <= lo_exp {
        hi_exp = lo_exp + 1.0;
    }
    let lo = 10f64.powf(lo_exp) * (1.0 - 1e-9);
    let hi = 10f64.powf(hi_exp) * (1.0 + 1e-9);
    lo..hi
}

fn draw<X, Y>(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    chart: &Chart,
    plotted: &[Plotted<'_>],
    x: X,
    y: Y,
) -> Result<()>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut ctx = ChartBuilder::on(root)
        .caption(&chart.title, (FONT, 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)?;

    ctx.configure_mesh()
        .x_desc(&chart.x_label)
        .y_desc(&chart.y_label)
        .axis_desc_style((FONT, 15))
        .label_style((FONT, 13))
        .x_label_formatter(&|v| tick_label(*v))
        .y_label_formatter(&|v| tick_label(*v))
        .max_light_lines(4)
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;

    for series in plotted {
        let color = series.color;
        ctx.draw_series(LineSeries::new(
            series.points.iter().copied(),
            color.stroke_width(2),
        ))?
        .label(series.name)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        ctx.draw_series(
            series
                .points
                .iter()
                .map(|&point| Circle::new(point, 3, color.filled())),
        )?;
    }

    ctx.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()?;
    Ok(())
}

fn draw_no_data(root: &DrawingArea<SVGBackend<'_>, Shift>, chart: &Chart) -> Result<()> {
    let area = root.titled(&chart.title, (FONT, 20))?;
    let (width, height) = area.dim_in_pixel();
    let centre = (
        i32::try_from(width / 2).unwrap_or(0),
        i32::try_from(height / 2).unwrap_or(0),
    );
    let style = TextStyle::from((FONT, 16))
        .color(&RGBColor(110, 110, 110))
        .pos(Pos::new(HPos::Center, VPos::Center));
    area.draw(&Text::new("no data", centre, style))?;
    Ok(())
}

/// Short tick labels: `0.25`, `500`, `1.5k`, `12M`, `5e-4`. Values are rounded to twelve
/// significant digits, which drops the float noise of computed ticks (`0.30000000000000004`)
/// but keeps neighbouring ticks on a narrow range apart (`1.0000012k`, `1.0000014k`).
fn tick_label(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude == 0.0 {
        return "0".to_owned();
    }
    if !(1e-3..1e12).contains(&magnitude) {
        return format!("{:e}", significant(value));
    }
    let (scaled, suffix) = if magnitude >= 1e9 {
        (value / 1e9, "G")
    } else if magnitude >= 1e6 {
        (value / 1e6, "M")
    } else if magnitude >= 1e3 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    format!("{}{suffix}", significant(scaled))
}

fn significant(value: f64) -> f64 {
    format!("{value:.11e}").parse().unwrap_or(value)
}

/// `svg_path` as a link from `doc_dir`, with `/` between components whatever the platform.
fn relative_link(doc_dir: &Path, svg_path: &Path) -> String {
    let fallback = || slashed(svg_path.components());
    let (doc_dir, svg_path): (PathBuf, PathBuf) = if doc_dir.is_absolute() == svg_path.is_absolute()
    {
        (doc_dir.to_path_buf(), svg_path.to_path_buf())
    } else {
        match (std::path::absolute(doc_dir), std::path::absolute(svg_path)) {
            (Ok(d), Ok(s)) => (d, s),
            _ => return fallback(),
        }
    };
    let doc: Vec<Component<'_>> = doc_dir
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect();
    let svg: Vec<Component<'_>> = svg_path
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect();
    let common = doc.iter().zip(&svg).take_while(|(a, b)| a == b).count();
    let ups = &doc[common..];
    // Climbing out of a `..` or a root would need the file system to resolve.
    if ups.iter().any(|c| !matches!(c, Component::Normal(_))) {
        return fallback();
    }
    let link = ups
        .iter()
        .map(|_| Component::ParentDir)
        .chain(svg[common..].iter().copied());
    slashed(link)
}

fn slashed<'a>(components: impl Iterator<Item = Component<'a>>) -> String {
    components
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
        .replace("//", "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "countersign-bench-chart-{name}-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4()
            ));
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {dir:?}: {e}"));
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn draw_to_file(name: &str, chart: &Chart) -> String {
        let dir = TempDir::new(name);
        let path = dir.0.join("chart.svg");
        if let Err(e) = line_chart(&path, chart) {
            panic!("drawing {name}: {e:#}");
        }
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path:?}: {e}"))
    }

    fn series(name: &str, points: &[(f64, f64)]) -> Series {
        Series {
            name: name.to_owned(),
            points: points.to_vec(),
        }
    }

    fn hex(color: RGBColor) -> String {
        format!("#{:02X}{:02X}{:02X}", color.0, color.1, color.2)
    }

    /// The number of points of each polyline stroked in `color`.
    fn polylines_in(svg: &str, color: RGBColor) -> Vec<usize> {
        let stroke = format!("stroke=\"{}\"", hex(color));
        svg.lines()
            .filter(|line| line.contains("<polyline") && line.contains(&stroke))
            .map(|line| {
                let points = line.split("points=\"").nth(1).unwrap_or("");
                let points = points.split('"').next().unwrap_or("");
                points.split_whitespace().count()
            })
            .collect()
    }

    fn markers_in(svg: &str, color: RGBColor) -> usize {
        let fill = format!("fill=\"{}\"", hex(color));
        svg.lines()
            .filter(|line| line.contains("<circle") && line.contains(&fill))
            .count()
    }

    fn is_svg(svg: &str) -> bool {
        let start = svg.trim_start();
        (start.starts_with("<svg") || start.starts_with("<?xml"))
            && svg.trim_end().ends_with("</svg>")
    }

    #[test]
    fn two_series_are_drawn_with_title_legend_lines_and_markers() {
        let chart = Chart {
            title: "Submit throughput".to_owned(),
            x_label: "concurrent clients".to_owned(),
            y_label: "actions/s".to_owned(),
            log_x: false,
            log_y: false,
            series: vec![
                series(
                    "countersign",
                    &[(1.0, 900.0), (4.0, 3100.0), (16.0, 7200.0)],
                ),
                series(
                    "bare insert",
                    &[(1.0, 1500.0), (4.0, 5200.0), (16.0, 11800.0)],
                ),
            ],
        };
        let svg = draw_to_file("two-series", &chart);

        assert!(is_svg(&svg), "not an SVG document:\n{svg}");
        for text in [
            "Submit throughput",
            "countersign",
            "bare insert",
            "actions/s",
            "concurrent clients",
        ] {
            assert!(svg.contains(text), "{text:?} missing from:\n{svg}");
        }
        for color in &PALETTE[..2] {
            assert!(
                polylines_in(&svg, *color).contains(&3),
                "no 3-point line in {}:\n{svg}",
                hex(*color)
            );
            assert_eq!(markers_in(&svg, *color), 3);
        }
        assert!(!svg.contains("no data"));
    }

    #[test]
    fn log_x_chart_leaves_out_a_zero_x_and_non_finite_points() {
        let chart = Chart {
            title: "Latency".to_owned(),
            x_label: "clients".to_owned(),
            y_label: "p99 ms".to_owned(),
            log_x: true,
            log_y: true,
            series: vec![series(
                "countersign",
                &[
                    (0.0, 1.0),
                    (1.0, 2.0),
                    (10.0, 3.0),
                    (100.0, 4.0),
                    (f64::NAN, 5.0),
                    (1000.0, f64::INFINITY),
                    (1000.0, -1.0),
                ],
            )],
        };
        let svg = draw_to_file("log-x", &chart);

        assert!(is_svg(&svg));
        assert!(polylines_in(&svg, PALETTE[0]).contains(&3), "{svg}");
        assert_eq!(markers_in(&svg, PALETTE[0]), 3);
    }

    #[test]
    fn a_series_with_nothing_drawable_is_left_out_and_others_keep_their_colour() {
        let chart = Chart {
            title: "Mixed".to_owned(),
            series: vec![
                series("empty", &[]),
                series("only nan", &[(f64::NAN, 1.0)]),
                series("single", &[(3.0, 3.0)]),
            ],
            ..Chart::default()
        };
        let svg = draw_to_file("mixed", &chart);

        assert!(!svg.contains("only nan") && !svg.contains(">\nempty"));
        assert!(svg.contains("single"));
        assert_eq!(markers_in(&svg, PALETTE[2]), 1);
        assert!(polylines_in(&svg, PALETTE[0]).is_empty());
    }

    #[test]
    fn a_chart_without_points_says_no_data() {
        for chart in [
            Chart {
                title: "Nothing yet".to_owned(),
                ..Chart::default()
            },
            Chart {
                title: "Nothing yet".to_owned(),
                log_x: true,
                log_y: true,
                series: vec![series("zeros", &[(0.0, 0.0), (-1.0, 5.0)])],
                ..Chart::default()
            },
        ] {
            let svg = draw_to_file("empty", &chart);
            assert!(is_svg(&svg));
            assert!(
                svg.contains("no data") && svg.contains("Nothing yet"),
                "{svg}"
            );
        }
    }

    #[test]
    fn flat_and_extreme_ranges_do_not_panic() {
        let cases: [&[(f64, f64)]; 9] = [
            &[(5.0, 5.0), (5.0, 5.0)],
            &[(0.0, 0.0)],
            &[(-3.0, -2.0), (-1.0, -7.0)],
            &[(1e15, 1.0), (1e15 + 1.0, 1.0)],
            &[(1e-300, 1e300), (2e-300, 1e-300)],
            &[(5e-324, 1e-320), (1e-323, 2e-320)],
            &[(1e-250, 1.0), (1e250, 2.0)],
            &[(f64::MAX, f64::MAX), (f64::MAX, 1.0)],
            &[(-f64::MAX, 0.0), (f64::MAX, 1.0)],
        ];
        for log in [false, true] {
            for points in cases {
                let chart = Chart {
                    title: "edge".to_owned(),
                    log_x: log,
                    log_y: log,
                    series: vec![series("s", points)],
                    ..Chart::default()
                };
                let dir = TempDir::new("edge");
                // Either a chart or an error; never a panic.
                if line_chart(&dir.0.join("edge.svg"), &chart).is_ok() {
                    let svg = std::fs::read_to_string(dir.0.join("edge.svg"))
                        .unwrap_or_else(|e| panic!("reading edge chart: {e}"));
                    assert!(is_svg(&svg));
                }
            }
        }
        let too_wide = Chart {
            series: vec![series("s", &[(-f64::MAX, 0.0), (f64::MAX, 1.0)])],
            ..Chart::default()
        };
        let dir = TempDir::new("too-wide");
        assert!(line_chart(&dir.0.join("too-wide.svg"), &too_wide).is_err());
    }

    #[test]
    fn an_unwritable_path_is_an_error() {
        let dir = TempDir::new("unwritable");
        let chart = Chart {
            series: vec![series("s", &[(1.0, 1.0)])],
            ..Chart::default()
        };
        assert!(line_chart(&dir.0.join("missing").join("chart.svg"), &chart).is_err());
    }

    #[test]
    fn tick_labels_are_short() {
        let cases = [
            (0.0, "0"),
            (-0.0, "0"),
            (0.25, "0.25"),
            (0.1 + 0.2, "0.3"),
            (500.0, "500"),
            (1500.0, "1.5k"),
            (12_000_000.0, "12M"),
            (3e9, "3G"),
            (-2000.0, "-2k"),
            (0.0001, "1e-4"),
            (0.0045, "0.0045"),
            (0.00035, "3.5e-4"),
            (1000.0012, "1.0000012k"),
            (2.5e15, "2.5e15"),
            (-1e-300, "-1e-300"),
        ];
        for (value, label) in cases {
            assert_eq!(tick_label(value), label, "{value}");
        }
    }

    #[test]
    fn markdown_image_links_relative_to_the_document() {
        assert_eq!(
            markdown_image(
                Path::new("docs"),
                Path::new("docs/perf/submit-scaling.svg"),
                "Submit scaling"
            ),
            "![Submit scaling](perf/submit-scaling.svg)"
        );
        assert_eq!(
            markdown_image(
                Path::new("/repo/docs"),
                Path::new("/repo/target/bench/a.svg"),
                "a"
            ),
            "![a](../target/bench/a.svg)"
        );
        assert_eq!(
            markdown_image(Path::new(""), Path::new("perf/a.svg"), "a"),
            "![a](perf/a.svg)"
        );
        assert_eq!(
            markdown_image(Path::new("./docs/"), Path::new("docs/a b.svg"), "[x]"),
            "![\\[x\\]](<a b.svg>)"
        );
        let cwd = std::env::current_dir().unwrap_or_else(|e| panic!("cwd: {e}"));
        assert_eq!(
            markdown_image(&cwd.join("docs"), Path::new("docs/perf/a.svg"), "a"),
            "![a](perf/a.svg)"
        );
    }
}
