// Sortable, filterable tables for the documentation site (mkdocs.yml extra_javascript).
// Every table of more than 12 rows gets a filter box (rows whose text contains every word typed,
// case-insensitive) and headers that sort on click (again: reverse). Numbers sort as numbers,
// with K/M/B suffixes ("135M", "1.7B") and thousands separators understood; blank and unknown
// ("?") cells sort last in either direction.
// Offline: no library, nothing fetched.
(function () {
  "use strict";
  var SCALE = { K: 1e3, M: 1e6, B: 1e9, T: 1e12 };

  function key(text) {
    var t = text.replace(/[,\u2020\s]/g, "");
    if (t === "" || t === "?") return { unknown: true };
    var m = /^(-?\d+(?:\.\d+)?)([KMBT]?)$/i.exec(t);
    if (m) return { n: parseFloat(m[1]) * (SCALE[m[2].toUpperCase()] || 1) };
    return { s: text.trim().toLowerCase() };
  }

  function compare(a, b) {
    if (a.n !== undefined && b.n !== undefined) return a.n - b.n;
    if (a.n !== undefined) return -1;
    if (b.n !== undefined) return 1;
    return a.s < b.s ? -1 : a.s > b.s ? 1 : 0;
  }

  function enhance(table) {
    var body = table.tBodies[0];
    if (!body || body.rows.length <= 12 || table.dataset.lmsTable) return;
    table.dataset.lmsTable = "1";
    var input = document.createElement("input");
    input.type = "search";
    input.className = "lms-table-filter";
    input.placeholder = "Filter " + body.rows.length + " rows (e.g. llama rotary)";
    input.setAttribute("aria-label", "Filter the table");
    var count = document.createElement("span");
    count.className = "lms-table-count";
    var wrap = table.closest(".md-typeset__table") || table;
    wrap.parentNode.insertBefore(input, wrap);
    wrap.parentNode.insertBefore(count, wrap);

    input.addEventListener("input", function () {
      var words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
      var shown = 0;
      Array.prototype.forEach.call(body.rows, function (row) {
        var text = row.textContent.toLowerCase();
        var ok = words.every(function (w) { return text.indexOf(w) >= 0; });
        row.style.display = ok ? "" : "none";
        if (ok) shown += 1;
      });
      count.textContent = words.length ? shown + " of " + body.rows.length + " rows" : "";
    });

    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell, col) {
      cell.classList.add("lms-sortable");
      cell.title = "Sort by " + cell.textContent.trim();
      cell.addEventListener("click", function () {
        var dir = cell.dataset.sort === "asc" ? -1 : 1;
        Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) { delete c.dataset.sort; });
        cell.dataset.sort = dir === 1 ? "asc" : "desc";
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var ka = key(a.cells[col].textContent), kb = key(b.cells[col].textContent);
          if (ka.unknown || kb.unknown) return (ka.unknown ? 1 : 0) - (kb.unknown ? 1 : 0);
          return dir * compare(ka, kb);
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  }

  function run() {
    Array.prototype.forEach.call(document.querySelectorAll("article table"), enhance);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", run);
  else run();
})();
