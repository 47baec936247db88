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
