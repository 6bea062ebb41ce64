// Gauntlet leaderboard: column sorting and a search box. Progressive enhancement only:
// without this script every table is complete and already ranked. No network access.
(function () {
  "use strict";

  function cellValue(row, index) {
    var cell = row.children[index];
    if (!cell) return { empty: true, num: false, value: "" };
    var raw = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
    if (raw === "" || raw === "—") return { empty: true, num: false, value: "" };
    var n = Number(raw);
    if (!isNaN(n) && cell.hasAttribute("data-sort")) return { empty: false, num: true, value: n };
    return { empty: false, num: false, value: raw.toLowerCase() };
  }

  function sortBy(table, index, th) {
    var body = table.tBodies[0];
    if (!body) return;
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, index), y = cellValue(b, index);
      if (x.empty || y.empty) return (x.empty ? 1 : 0) - (y.empty ? 1 : 0);  // missing values last
      var c = (x.num && y.num) ? x.value - y.value : (x.value < y.value ? -1 : x.value > y.value ? 1 : 0);
      return ascending ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }

  function makeSortable(table) {
    if (!table.tHead || !table.tHead.rows.length) return;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
      var button = document.createElement("button");
      button.type = "button";
      button.className = "sort";
      button.title = "Sort by this column";
      while (th.firstChild) button.appendChild(th.firstChild);
      th.appendChild(button);
      button.addEventListener("click", function () { sortBy(table, index, th); });
    });
  }

  function setupSearch() {
    var box = document.getElementById("search");
    if (!box) return;
    box.parentNode.hidden = false;
    var count = document.getElementById("search-count");
    var empty = document.querySelector(".search-empty");
    var rows = Array.prototype.slice.call(document.querySelectorAll("table.searchable tbody tr"));
    box.addEventListener("input", function () {
      var q = box.value.trim().toLowerCase();
      var shown = 0;
      rows.forEach(function (r) {
        var hit = q === "" || r.textContent.toLowerCase().indexOf(q) !== -1;
        r.hidden = !hit;
        if (hit) shown += 1;
      });
      if (count) count.textContent = q === "" ? "" : shown + " of " + rows.length + " rows";
      if (empty) empty.hidden = shown !== 0;
    });
  }

  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), makeSortable);
  setupSearch();
}());
