// Small progressive enhancements; every page works without them.
(function () {
  var menu = document.querySelector(".menu");
  var sidebar = document.getElementById("sidebar");
  if (menu && sidebar) {
    menu.addEventListener("click", function () {
      var open = sidebar.classList.toggle("open");
      menu.setAttribute("aria-expanded", open ? "true" : "false");
    });
  }
  // Sort a table by a column: click its header (again to reverse). Numbers sort as numbers, "–"/empty cells last.
  function key(cell) {
    var t = (cell ? cell.textContent : "").trim().replace(/[\u2212]/g, "-").replace(/,/g, "");
    var n = parseFloat(t.replace(/%$/, ""));
    return /^[-+]?(\d|\.\d)/.test(t) && !isNaN(n) ? n : t.toLowerCase();
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var body = table.tBodies[0];
    if (!table.tHead || !body || body.rows.length < 3) return;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.title = "Sort by this column";
      th.addEventListener("click", function () {
        var up = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(th.parentNode.cells, function (c) { c.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", up ? "ascending" : "descending");
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          var blankX = x === "" || x === "–", blankY = y === "" || y === "–";
          if (blankX !== blankY) return blankX ? 1 : -1;  // empty cells last either way
          if (typeof x !== typeof y) return typeof x === "number" ? -1 : 1;
          var d = x < y ? -1 : x > y ? 1 : 0;
          return up ? d : -d;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  // Enlarge a thumbnail in place; the link still opens the full-size file with a modifier key or without scripts.
  var dialog = document.getElementById("zoom");
  if (!dialog || typeof dialog.showModal !== "function") return;
  var box = dialog.querySelector(".zoombox");
  document.addEventListener("click", function (ev) {
    var link = ev.target.closest("a.zoomable");
    if (!link || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;
    ev.preventDefault();
    var thumb = link.querySelector("img");
    var img = document.createElement("img");
    img.src = link.getAttribute("href");
    img.alt = thumb ? thumb.alt : (link.title || link.textContent);
    if (thumb && thumb.classList.contains("pix")) img.className = "pix";
    box.replaceChildren(img);
    var fig = link.closest("figure");
    var cap = fig ? fig.querySelector("figcaption:not(.label)") : null;
    var label = fig ? fig.querySelector("figcaption.label") : null;
    dialog.querySelector("p").textContent = [label ? label.textContent : "", cap ? cap.textContent : (link.title || "")]
      .filter(Boolean).join(": ");
    dialog.showModal();
  });
  dialog.addEventListener("click", function (ev) { if (ev.target === dialog) dialog.close(); });
  dialog.addEventListener("close", function () { box.replaceChildren(); });
})();
