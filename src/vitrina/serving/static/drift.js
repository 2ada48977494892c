"use strict";
// Drift at a glance: GET /v1/drift, one row a day with bars for the shares and the flagged categories.
(() => {
  const { api, label, percent, el } = vitrina;
  const rows = document.getElementById("drift-rows");

  function bar(share) {
    const cell = el("td", "num");
    const track = el("span", "share-bar");
    const fill = el("span", "share-fill");
    fill.style.width = `${Math.round(share * 100)}%`;
    track.append(fill);
    cell.append(track, el("span", null, ` ${percent(share)}`));
    return cell;
  }

  function flags(day) {
    if (!day.flags.length) return el("td", "field-hint", day.checks >= 50 ? "none" : "too few checks to judge");
    return el("td", null, null, ...day.flags.map((f) => el("span", `pill pill-${f.direction === "high" ? "mismatch" : "uncertain"}`,
      `${label(f.category)} ${f.by} ${percent(f.share)} (trained ${percent(f.training_share)})`)));
  }

  api("/v1/drift?days=14").then((r) => r.json()).then((report) => {
    rows.replaceChildren(...report.days.slice().reverse().map((day) => el("tr", "drift-day", null,
      el("td", "num", day.day), el("td", "num", String(day.checks)), bar(day.shares.mismatch), bar(day.shares.uncertain),
      bar(day.shares.unknown), flags(day))));
    if (!report.days.length) rows.append(el("tr", null, null, el("td", "field-hint", "No checks in the last 14 days.")));
  }).catch(() => {});
})();
