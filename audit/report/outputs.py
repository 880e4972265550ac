"""The short forms of the report written beside it: ``summary.md`` and ``junit.xml``.

* ``summary.md``: verdict, gates, top findings (pair, size, score, verification,
  status) and the changes since the baseline, for a pull request or a chat message.
  Text from the data set (class names, ids) is escaped for Markdown and HTML.
* ``junit.xml``: one ``<testcase>`` per gate (``<failure>`` when it failed), so a CI
  system shows the gates as tests. Built with ElementTree (escaped), characters XML
  forbids are dropped.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from audit.integrity import write_atomic
from audit.report.fmt import fmt_num, fmt_pct

SUMMARY_MD = "summary.md"
JUNIT_XML = "junit.xml"
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def md(text) -> str:
    """``text`` (any value, as ``str``) safe inside a Markdown table cell: control characters dropped, HTML
    escaped, inline Markdown punctuation backslashed, on one line."""
    s = _XML_BAD.sub("", str(text)).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return " ".join(s.split())


def summary_markdown(view: dict, report_name: str = "index.html") -> str:
    """summary.md text from ``view``, an ``audit.report.summary.summary_view``, linking to ``report_name``."""
    status = view["status"].upper()
    lines = [f"## cnn-audit {md(view['run_id'])}: **{status}**", "", f"**{md(view['verdict']['text'])}**", ""]
    lines += _warnings(view)
    gates = view["gates"]
    if view["failed_gates"]:
        lines.append(f"{len(view['failed_gates'])} of {len(gates)} gate(s) failed: "
                     + ", ".join(md(g) for g in view["failed_gates"]) + ".")
    elif gates:
        lines.append(f"All {len(gates)} gate(s) passed.")
    else:
        lines.append("No gates configured.")
    metrics = {m["key"]: m["value"] for m in view["metrics"]}
    lines += ["", f"{metrics.get('n_images', '—')} images, accuracy {metrics.get('accuracy', '—')}, "
              f"{metrics.get('n_unreadable', '—')} unreadable, {metrics.get('n_selected', '—')} selected, "
              f"{view['n_findings']} finding(s).", ""]
    if gates:
        lines += ["| gate | value | threshold | result |", "| --- | ---: | ---: | --- |"]
        for g in gates:
            result = "pass" if g["passed"] is True else "**FAIL**" if g["passed"] is False else "—"
            lines.append(f"| {md(g['name'])} | {md(fmt_num(g['value']))} | {md(fmt_num(g['threshold']))} | {result} |")
        lines.append("")
    if view["top_findings"]:
        lines += ["### Top findings", "", "| # | finding | true → predicted | size | score | verification | status |",
                  "| ---: | --- | --- | ---: | ---: | --- | --- |"]
        for f in view["top_findings"]:
            status_text = " ".join(x for x in (f["status"], f["triage"]) if x) or "—"
            lines.append(f"| {md(f['rank'])} | {md(f['id'])} | {md(f['true_label'])} → {md(f['predicted_label'])} "
                         f"| {md(fmt_num(f['size']))} | {md(fmt_num(f['score']))} | {md(f['verification'])} "
                         f"| {md(status_text)} |")
        lines.append("")
    c = view["changes"]
    lines.append("### Changes since the baseline")
    lines.append("")
    if not c["has_baseline"]:
        lines.append("No baseline: nothing to compare with.")
    else:
        lines.append(f"Baseline {md(c['run_id'])}: {len(c['new'])} new finding(s), {len(c['persisting'])} "
                     f"persisting, {len(c['resolved'])} resolved.")
        for f in c["new"]:
            lines.append(f"- new: {md(f['id'])} {md(f['true_label'])} → {md(f['predicted_label'])} "
                         f"({md(fmt_num(f['size']))} images)")
        for f in c["resolved"]:
            lines.append(f"- resolved: {md(f['id'])} {md(f['true_label'])} → {md(f['predicted_label'])}")
        for p in c["pairs"][:5]:
            before = fmt_pct(p["baseline_error_rate"]) if p["baseline_error_rate"] is not None else "absent"
            lines.append(f"- error rate {md(p['true_label'])} → {md(p['predicted_label'])}: "
                         f"{md(before)} → {md(fmt_pct(p['error_rate']))}")
    lines += ["", f"Full report: {md(report_name)}", ""]
    return "\n".join(lines)


def _warnings(view: dict) -> list[str]:
    """The soundness warnings and expired triage entries as Markdown list lines (and a blank line)."""
    lines = [f"- warning: {md(c['message'])}" for c in view["soundness"]]
    lines += [f"- triage entry {md(e.get('id'))} ({md(e.get('action'))}) expired on {md(e.get('expires'))}: "
              "no longer applied" for e in view["triage_expired"]]
    return lines + [""] if lines else []


def summary_slack(view: dict, report_link: str) -> str:
    """The chat variant of summary.md (``report.summary_format: slack``) of ``view``: no tables, one line per
    item, the report as ``report_link`` (absolute when ``report.url`` is set)."""
    status = view["status"].upper()
    lines = [f"*cnn-audit {_clean(view['run_id'])}: {status}*", _clean(view["verdict"]["text"])]
    lines += [f"• :warning: {_clean(c['message'])}" for c in view["soundness"]]
    lines += [f"• triage entry {_clean(e.get('id'))} expired on {_clean(e.get('expires'))}: no longer applied"
              for e in view["triage_expired"]]
    failed = view["failed_gates"]
    lines.append(f"Gates: {len(failed)} of {len(view['gates'])} failed ({', '.join(map(_clean, failed))})" if failed
                 else f"Gates: all {len(view['gates'])} passed" if view["gates"] else "Gates: none configured")
    metrics = {m["key"]: m["value"] for m in view["metrics"]}
    lines.append(f"{metrics.get('n_images', '—')} images, accuracy {metrics.get('accuracy', '—')}, "
                 f"{metrics.get('n_unreadable', '—')} unreadable, {view['n_findings']} finding(s)")
    for f in view["top_findings"]:
        lines.append(f"• #{f['rank']} {_clean(f['id'])} {_clean(f['true_label'])} → {_clean(f['predicted_label'])}, "
                     f"{fmt_num(f['size'])} images, {_clean(f['verification'])}")
    c = view["changes"]
    if c["has_baseline"]:
        lines.append(f"Since {_clean(c['run_id'])}: {len(c['new'])} new, {len(c['persisting'])} persisting, "
                     f"{len(c['resolved'])} resolved")
    lines.append(f"Report: {report_link}")
    return "\n".join(lines) + "\n"


def _clean(text) -> str:
    return _XML_BAD.sub("", str(text))


def junit_xml(view: dict) -> bytes:
    """junit.xml bytes (UTF-8) from ``view``, an ``audit.report.summary.summary_view``: the verdict
    (always: a CI's junit step rejects a file without test cases; it passes, its text in
    ``system-out``), then one test case per gate."""
    gates = view["gates"]
    failures = sum(1 for g in gates if g["passed"] is False)
    suite_name = _clean(f"cnn-audit {view['run_id']}")
    n = str(len(gates) + 1)
    suites = ET.Element("testsuites", name="cnn-audit", tests=n, failures=str(failures))
    suite = ET.SubElement(suites, "testsuite", name=suite_name, tests=n, failures=str(failures),
                          errors="0", skipped=str(sum(1 for g in gates if g["passed"] is None)))
    case = ET.SubElement(suite, "testcase", classname="cnn-audit.verdict", name="verdict")
    ET.SubElement(case, "system-out").text = _clean("\n".join([view["verdict"]["text"]]
                                                               + [c["message"] for c in view["soundness"]]))
    for g in gates:
        case = ET.SubElement(suite, "testcase", classname="cnn-audit.gates", name=_clean(g["name"]))
        detail = f"value {fmt_num(g['value'])}, threshold {fmt_num(g['threshold'])}"
        if g["passed"] is False:
            failure = ET.SubElement(case, "failure", message=_clean(f"gate {g['name']} failed: {detail}"),
                                    type="GateFailed")
            failure.text = _clean(detail)
        elif g["passed"] is None:
            ET.SubElement(case, "skipped", message="no result")
        out = ET.SubElement(case, "system-out")
        out.text = _clean(detail)
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True)


def write(run_dir: Path, view: dict, report_name: str = "index.html", summary_format: str = "md",
          url: str | None = None) -> list[Path]:
    """Write summary.md and junit.xml of ``view`` into the run folder ``run_dir`` (atomically); returns their
    paths.

    ``report_name`` is the report file summary.md links to; ``summary_format``: ``md`` (tables) or
    ``slack`` (no tables, for chat); ``url``: the published report, linked instead when set.
    """
    md_path, xml_path = Path(run_dir) / SUMMARY_MD, Path(run_dir) / JUNIT_XML
    text = (summary_slack(view, url or str((Path(run_dir) / report_name).resolve())) if summary_format == "slack"
            else summary_markdown(view, url or report_name))
    write_atomic(md_path, text)
    write_atomic(xml_path, junit_xml(view))
    return [md_path, xml_path]
