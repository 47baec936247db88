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
  var dialog = document.getElementById("zoom");
  if (!dialog || typeof dialog.showModal !== "function") return;
  document.addEventListener("click", function (ev) {
    var link = ev.target.closest("a.zoomable");
    if (!link || ev.ctrlKey || ev.metaKey || ev.shiftKey) return;
    ev.preventDefault();
    var img = dialog.querySelector("img");
    img.src = link.getAttribute("href");
    var thumb = link.querySelector("img");
    img.alt = thumb ? thumb.alt : "";
    var fig = link.closest("figure");
    var cap = fig ? fig.querySelector("figcaption:not(.label)") : null;
    dialog.querySelector("p").textContent = cap ? cap.textContent : (link.title || "");
    dialog.showModal();
  });
  dialog.addEventListener("click", function (ev) { if (ev.target === dialog) dialog.close(); });
})();
