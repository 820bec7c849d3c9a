//! `aion tune-fallback`: Cost(τ) of the fallback threshold over the answer history (see
//! `aion_labels::cost` for the formula and what is estimated from labels), its argmin and the
//! cost of the threshold in force.

use std::path::PathBuf;
use std::sync::Arc;

use aion_api::tables::session;
use aion_labels::{Answer, CostModel, ErrorTerm};
use anyhow::{bail, Context as _, Result};
use datafusion::arrow::array::{ArrayRef, Float64Array, RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};

use super::answers::{self, Window};
use super::sql::{print, Format};
use crate::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cost of one answer handed to the external fallback LLM.
    #[arg(long)]
    pub c_fallback: f64,
    /// Cost of one answer served by the local model.
    #[arg(long)]
    pub c_local: f64,
    /// Extra cost of a wrong local answer; needs labelled answers (`labels` table) to count.
    #[arg(long)]
    pub c_error: Option<f64>,
    /// One tenant (default: all).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Days of event time before the newest answer (of the tenant) that form the history.
    #[arg(long, default_value_t = 7)]
    pub days: i64,
    /// τ grid points over [0, 1] (101: steps of 0.01).
    #[arg(long, default_value_t = 101)]
    pub steps: usize,
    /// The confidence threshold in force (default: inferred from the recorded fallbacks, as the
    /// τ that best explains "fell back ⇔ C < τ").
    #[arg(long)]
    pub current: Option<f64>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Where the tables are (default: the state dir).
    #[arg(long, env = "AION_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

fn table(points: &[aion_labels::CostPoint]) -> Result<RecordBatch> {
    let f = |name: &str, nullable| Field::new(name, DataType::Float64, nullable);
    let u = |name: &str| Field::new(name, DataType::UInt64, false);
    let schema = Arc::new(Schema::new(vec![
        f("tau", false),
        u("answers"),
        f("p_fallback", false),
        f("p_local", false),
        u("labelled_local"),
        u("wrong_local"),
        f("p_wrong_local", true),
        f("cost", true),
    ]));
    let col = |g: fn(&aion_labels::CostPoint) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(points.iter().map(g)))
    };
    let count = |g: fn(&aion_labels::CostPoint) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(points.iter().map(g)))
    };
    let columns: Vec<ArrayRef> = vec![
        col(|p| p.tau),
        count(|p| p.answers),
        col(|p| p.p_fallback),
        col(|p| p.p_local),
        count(|p| p.labelled_local),
        count(|p| p.wrong_local),
        Arc::new(Float64Array::from_iter(
            points.iter().map(|p| p.p_wrong_local),
        )),
        Arc::new(Float64Array::from_iter(points.iter().map(|p| p.cost))),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

fn show(cost: Option<f64>) -> String {
    cost.map_or("unknown (no labelled answer with C ≥ τ)".into(), |c| {
        format!("{c:.6}")
    })
}

pub async fn run(args: Args, ctx: &Context) -> Result<()> {
    if let Some(t) = &args.tenant {
        aion_events::validate_tenant_id(t).with_context(|| format!("--tenant {t:?}"))?;
    }
    if args.days <= 0 {
        bail!("--days must be positive");
    }
    if let Some(tau) = args.current {
        aion_labels::check_tau(tau).context("--current")?;
    }
    let model = CostModel {
        c_fallback: args.c_fallback,
        c_local: args.c_local,
        c_error: args.c_error,
    };
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| ctx.state_dir.clone());
    let session = session(&data_dir).await?;
    let window = Window {
        tenant: args.tenant.clone(),
        since: None,
        days: Some(args.days),
    };
    let rows = answers::answers(&session, &window).await?;
    let labels = answers::correctness(&session, args.tenant.as_deref()).await?;
    let history: Vec<Answer> = rows
        .iter()
        .map(|r| Answer {
            confidence: r.confidence,
            correct: labels
                .get(&(r.tenant_id.clone(), r.event_id.clone()))
                .copied(),
        })
        .collect();
    let sweep = aion_labels::sweep(&history, &model, args.steps)?;
    let (current, how) = match args.current {
        Some(tau) => (tau, "given by --current".to_owned()),
        None => {
            let decisions: Vec<(f64, bool)> =
                rows.iter().map(|r| (r.confidence, r.fallback)).collect();
            match aion_labels::infer_threshold(&decisions, args.steps)? {
                Some((tau, agree)) => (
                    tau,
                    format!(
                        "inferred from the recorded fallbacks: {:.1} % of them agree with C < τ",
                        agree * 100.0
                    ),
                ),
                None => bail!("no answers in the window"),
            }
        }
    };
    print(args.format, &[table(&sweep.points)?])?;

    let mut summary = Vec::new();
    let (first, last) = (
        rows.iter().map(|r| r.ts).min(),
        rows.iter().map(|r| r.ts).max(),
    );
    if let (Some(first), Some(last)) = (first, last) {
        summary.push(format!(
            "history: {} answers from {first} to {last} ({} labelled with correct/wrong)",
            rows.len(),
            sweep.labelled
        ));
    }
    summary.push(match sweep.error_term {
        ErrorTerm::Estimated => format!(
            "cost = p(C<τ)·{} + p(C≥τ)·({} + p(wrong|C≥τ)·{}), p(wrong|C≥τ) estimated from the labelled answers with C ≥ τ",
            model.c_fallback,
            model.c_local,
            model.c_error.unwrap_or_default()
        ),
        ErrorTerm::NotRequested => format!(
            "cost = p(C<τ)·{} + p(C≥τ)·{}: no --c-error, so wrong answers cost nothing here",
            model.c_fallback, model.c_local
        ),
        ErrorTerm::NoLabels => format!(
            "cost = p(C<τ)·{} + p(C≥τ)·{}: no answer in the history is labelled, so p(wrong|C≥τ) cannot be estimated and the c_error term is left out",
            model.c_fallback, model.c_local
        ),
    });
    match aion_labels::argmin(&sweep.points) {
        Some(best) => summary.push(format!(
            "argmin: τ = {:.4}, cost {}, fallback share {:.4}",
            best.tau,
            show(best.cost),
            best.p_fallback
        )),
        None => summary.push("argmin: none (no τ with a known cost)".into()),
    }
    let at = aion_labels::cost_at(&history, &model, current, sweep.error_term);
    summary.push(format!(
        "current: τ = {current:.4} ({how}), cost {}, fallback share {:.4}",
        show(at.cost),
        at.p_fallback
    ));
    // csv and json stay machine-readable on standard output.
    for line in summary {
        match args.format {
            Format::Table => println!("{line}"),
            Format::Csv | Format::Json => eprintln!("{line}"),
        }
    }
    Ok(())
}
