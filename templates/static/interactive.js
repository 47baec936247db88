// Explorers over the report's own data: the embeddings' points, the tiles of the attention, activation-map and
// top-image grids, and an image's attribution maps over the image. The data come from data/NAME.js (written once per
// site by reportgen/interactive.py) or from the page's own figures; this script only lays them out. Each section
// starts hidden: without JavaScript the page is its figures, as before.
(function () {
  "use strict";
  var DATA = window.REPORTGEN_DATA || {};
  // matplotlib's tab10 then tab20's light half: the static scatter plots' class colours
  var COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d",
    "#9edae5"];
  var SVG = "http://www.w3.org/2000/svg";

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function unique(list) {
    var seen = [];
    list.forEach(function (v) { if (seen.indexOf(v) < 0) seen.push(v); });
    return seen;
  }

  // a labelled <select>; returns the select element
  function chooser(parent, name, label, values, onchange) {
    var wrap = el("label", {"class": "choose"}, label + " ");
    var sel = el("select", {name: name});
    values.forEach(function (v) { sel.appendChild(el("option", {value: v}, v)); });
    sel.addEventListener("change", function () { onchange(sel.value); });
    wrap.appendChild(sel);
    parent.appendChild(wrap);
    return sel;
  }

  function setOptions(sel, values, keep) {
    sel.replaceChildren();
    values.forEach(function (v) { sel.appendChild(el("option", {value: v}, v)); });
    sel.value = values.indexOf(keep) >= 0 ? keep : values[0];
  }

  // ---- embeddings: one point per image; hover shows its thumbnail, class and prediction; click opens its page
  function embedding(section, data, root, pages) {
    var pts = data.points, n = pts.index.length, layers = data.layers;
    var controls = el("div", {"class": "controls"});
    section.appendChild(controls);
    var views = Object.keys(layers[0].views);
    var state = {layer: layers[layers.length - 1].key, view: views[0]};
    chooser(controls, "layer", "Layer", layers.map(function (l) { return l.key; }), function (v) {
      state.layer = v; draw();
    }).value = state.layer;
    chooser(controls, "view", "Projection", views, function (v) { state.view = v; draw(); });
    var box = el("div", {"class": "scatter"});
    section.appendChild(box);
    var size = 520, margin = 12;
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + size + " " + size);
    svg.setAttribute("role", "img");
    box.appendChild(svg);
    var tip = el("div", {"class": "tip", role: "status"});
    tip.hidden = true;
    box.appendChild(tip);
    var info = el("p", {"class": "small"});
    section.appendChild(info);
    var colour = function (k) {
      var c = pts.label[k] >= 0 ? pts.label[k] : pts.pred[k];
      return COLOURS[c % COLOURS.length];
    };
    var circles = [];
    for (var k = 0; k < n; k++) {
      var c = document.createElementNS(SVG, "circle");
      var paged = pages[String(pts.index[k])];
      c.setAttribute("r", paged ? 6 : 4);
      c.setAttribute("fill", colour(k));
      c.setAttribute("class", paged ? "point paged" : "point");
      c.setAttribute("data-k", k);
      c.setAttribute("data-index", pts.index[k]);
      svg.appendChild(c);
      circles.push(c);
    }
    // the points with a page of their own on top
    circles.filter(function (c) { return c.classList.contains("paged"); }).forEach(function (c) { svg.appendChild(c); });
    var legend = el("ul", {"class": "legend"});
    data.classes.slice(0, COLOURS.length).forEach(function (name, c) {
      var li = el("li", {}, name);
      li.prepend(el("span", {"class": "swatch", style: "background:" + COLOURS[c]}));
      legend.appendChild(li);
    });
    if (data.classes.length <= COLOURS.length) section.appendChild(legend);

    function draw() {
      var layer = layers.filter(function (l) { return l.key === state.layer; })[0];
      var xy = layer.views[state.view];
      var x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
      xy.forEach(function (p) { x0 = Math.min(x0, p[0]); x1 = Math.max(x1, p[0]); y0 = Math.min(y0, p[1]); y1 = Math.max(y1, p[1]); });
      var span = Math.max(x1 - x0, y1 - y0) || 1, inner = size - 2 * margin;
      var ox = margin + (inner - (x1 - x0) / span * inner) / 2, oy = margin + (inner - (y1 - y0) / span * inner) / 2;
      xy.forEach(function (p, k) {
        circles[k].setAttribute("cx", (ox + (p[0] - x0) / span * inner).toFixed(1));
        circles[k].setAttribute("cy", (size - oy - (p[1] - y0) / span * inner).toFixed(1));  // y up, as in the plot
      });
      svg.setAttribute("aria-label", state.view + " of " + n + " images at " + state.layer);
      info.textContent = state.view + " of " + n + " images at " + state.layer +
        (layer.knn !== null && layer.knn !== undefined ? "; held-out k-NN accuracy " + layer.knn.toFixed(3) : "") +
        ". Point at a dot to see its image; the larger dots open the image's page.";
    }

    // point k's thumbnail from the sprite sheet, drawn about `side` pixels tall
    function thumb(k, side) {
      var s = data.sprite, zoom = Math.max(1, Math.floor(side / Math.max(s.tile[0], s.tile[1])));
      var col = k % s.cols, row = Math.floor(k / s.cols);
      var img = el("div", {"class": "thumb", role: "img", "aria-label": pts.name[k]});
      img.style.width = s.tile[1] * zoom + "px";
      img.style.height = s.tile[0] * zoom + "px";
      img.style.backgroundImage = "url(\"" + root + s.file + "\")";
      img.style.backgroundSize = (s.cols * s.tile[1] * zoom) + "px auto";
      img.style.backgroundPosition = (-col * s.tile[1] * zoom) + "px " + (-row * s.tile[0] * zoom) + "px";
      return img;
    }

    function words(k) {
      var label = pts.label[k] >= 0 ? data.classes[pts.label[k]] : "unknown";
      return [pts.name[k], "class " + label, "predicted " + data.classes[pts.pred[k]]];
    }

    function show(k, ev) {
      tip.replaceChildren();
      if (data.sprite) tip.appendChild(thumb(k, 96));
      var label = pts.label[k] >= 0 ? data.classes[pts.label[k]] : "unknown";
      var pred = data.classes[pts.pred[k]];
      tip.appendChild(el("strong", {"class": "name"}, pts.name[k]));
      tip.appendChild(el("span", {"class": "cls"}, "class " + label));
      var p = el("span", {"class": "pred"}, "predicted " + pred);
      if (pts.label[k] >= 0) p.classList.add(pts.label[k] === pts.pred[k] ? "right" : "wrong");
      tip.appendChild(p);
      tip.appendChild(el("span", {"class": "small"}, pages[String(pts.index[k])] ? "click to open its page" :
        data.sprite ? "click to enlarge" : ""));
      var r = box.getBoundingClientRect();
      var x = ev.clientX - r.left, y = ev.clientY - r.top;
      tip.style.left = Math.min(x + 14, r.width - 150) + "px";
      tip.style.top = (y + 14) + "px";
      tip.hidden = false;
    }

    svg.addEventListener("mouseover", function (ev) {
      var c = ev.target.closest && ev.target.closest("circle");
      if (c) show(+c.getAttribute("data-k"), ev);
    });
    svg.addEventListener("mouseleave", function () { tip.hidden = true; });
    svg.addEventListener("click", function (ev) {
      var c = ev.target.closest && ev.target.closest("circle");
      if (!c) return;
      var page = pages[c.getAttribute("data-index")], k = +c.getAttribute("data-k");
      var dialog = document.getElementById("zoom");
      if (page) {
        window.location.href = page;
      } else if (data.sprite && dialog && typeof dialog.showModal === "function") {
        // only the sample images have pages; the others are in the site as their thumbnail alone
        dialog.querySelector(".zoombox").replaceChildren(thumb(k, 320));
        dialog.querySelector("p").textContent = words(k).join(", ") + " (its " + data.sprite.tile[1] + "x" +
          data.sprite.tile[0] + " thumbnail: only the sample images have a page and their full size in the report)";
        tip.hidden = true;
        dialog.showModal();
      }
    });
    draw();
  }

  // ---- tiles of grid PNGs: choose a value on each axis (image, layer, head or channel); the tile shown is cut from
  // the grid's own PNG, which opens at full size on a click
  function tiles(section, data, root) {
    var axes = data.axes, all = data.tiles, first = 4;  // a tile: [grid, row, col, span, value per axis...]
    var controls = el("div", {"class": "controls"});
    section.appendChild(controls);
    var current = all[0].slice(first);
    var sels = axes.map(function (axis, a) {
      return chooser(controls, axis, axis.charAt(0).toUpperCase() + axis.slice(1), [], function (v) { pick(a, v); });
    });
    var step = el("span", {"class": "step"});
    var prev = el("button", {type: "button", title: "Previous " + axes[axes.length - 1]}, "◀");
    var next = el("button", {type: "button", title: "Next " + axes[axes.length - 1]}, "▶");
    step.appendChild(prev);
    step.appendChild(next);
    controls.appendChild(step);
    var fig = el("figure", {"class": "tile"});
    var link = el("a", {"class": "zoomable", title: "Open the whole grid at full size"});
    var view = el("span", {"class": "cut"});
    var img = el("img", {"class": "pix", alt: ""});
    view.appendChild(img);
    link.appendChild(view);
    fig.appendChild(link);
    var cap = el("figcaption", {"class": "label"});
    fig.appendChild(cap);
    section.appendChild(fig);

    function matches(t, values, upto) {
      for (var a = 0; a < upto; a++) if (t[first + a] !== values[a]) return false;
      return true;
    }
    // the values of axis a among the tiles that agree with the current values of the axes before it
    function options(a) {
      return unique(all.filter(function (t) { return matches(t, current, a); }).map(function (t) { return t[first + a]; }));
    }
    function pick(a, v) {
      current[a] = v;
      // keep the other choices where such a tile exists; otherwise the first tile with the choices up to axis a
      var t = all.filter(function (t) { return matches(t, current, axes.length); })[0] ||
        all.filter(function (t) { return matches(t, current, a + 1); })[0];
      current = t.slice(first);
      render(t);
    }
    function render(t) {
      axes.forEach(function (axis, a) { setOptions(sels[a], options(a), current[a]); });
      var g = data.grids[t[0]], th = g.tile[0], tw = g.tile[1], span = t[3];
      var w = tw + g.pitch[1] * (span - 1), h = th;
      var s = Math.min(720 / w, 360 / h);
      s = s >= 1 ? Math.floor(s) : s;
      view.style.width = w * s + "px";
      view.style.height = h * s + "px";
      img.src = root + g.file;
      img.width = g.width * s;
      img.height = g.height * s;
      img.style.left = -(g.origin[0] + t[2] * g.pitch[1]) * s + "px";
      img.style.top = -(g.origin[1] + t[1] * g.pitch[0]) * s + "px";
      img.alt = current.join(", ");
      link.href = root + g.file;
      cap.textContent = axes.map(function (axis, a) { return current[a]; }).join(" · ");
      section.setAttribute("data-shown", JSON.stringify([t[0], t[1], t[2], t[3]]));
    }
    function move(d) {
      var last = axes.length - 1, vals = options(last), i = vals.indexOf(current[last]);
      pick(last, vals[(i + d + vals.length) % vals.length]);
    }
    prev.addEventListener("click", function () { move(-1); });
    next.addEventListener("click", function () { move(1); });
    render(all[0]);
  }

  // ---- an image page: its attribution maps over the image, by method, class and scale, with an opacity slider
  function overlay(section) {
    var maps = JSON.parse(section.getAttribute("data-maps"));
    var controls = section.querySelector(".controls");
    var over = section.querySelector("img.over"), link = section.querySelector("a.zoomable");
    var cap = section.querySelector("figcaption");
    var state = {method: maps[0].method, cls: maps[0]["class"], scale: maps[0].scale};
    var methods = unique(maps.map(function (m) { return m.method; }));
    var msel = chooser(controls, "method", "Method", methods, function (v) { state.method = v; render(); });
    var csel = chooser(controls, "class", "Class", [], function (v) { state.cls = v; render(); });
    var scales = unique(maps.map(function (m) { return m.scale; }));
    var ssel = chooser(controls, "scale", "Scale", scales, function (v) { state.scale = v; render(); });
    if (scales.length < 2) ssel.parentNode.hidden = true;
    var wrap = el("label", {"class": "choose"}, "Map opacity ");
    var slider = el("input", {type: "range", name: "opacity", min: "0", max: "100", value: "100"});
    var out = el("output", {}, "100%");
    slider.addEventListener("input", function () {
      over.style.opacity = slider.value / 100;
      out.textContent = slider.value + "%";
    });
    wrap.appendChild(slider);
    wrap.appendChild(out);
    controls.appendChild(wrap);
    function render() {
      var ofMethod = maps.filter(function (m) { return m.method === state.method; });
      var classes = unique(ofMethod.map(function (m) { return m["class"]; }));
      setOptions(csel, classes, state.cls);
      state.cls = csel.value;
      var m = ofMethod.filter(function (m) { return m["class"] === state.cls && m.scale === state.scale; })[0] ||
        ofMethod.filter(function (m) { return m["class"] === state.cls; })[0];
      state.scale = m.scale;
      ssel.value = m.scale;
      msel.value = m.method;
      over.src = m.file;
      over.alt = m.alt;
      link.href = m.file;
      var i = csel.selectedIndex;
      Array.prototype.forEach.call(csel.options, function (o) {
        var r = ofMethod.filter(function (x) { return x["class"] === o.value; })[0].role;
        o.textContent = o.value + " (" + r + ")";
      });
      csel.selectedIndex = i;
      cap.textContent = m.alt;
    }
    render();
  }

  document.querySelectorAll("section.interactive[hidden]").forEach(function (section) {
    if (section.hasAttribute("data-maps")) {
      overlay(section);
    } else {
      var data = DATA[section.getAttribute("data-analysis")];
      if (!data) return;  // no data file: the figures below say it all
      var root = section.getAttribute("data-root") || "";
      var pages = JSON.parse(section.getAttribute("data-pages") || "{}");
      if (data.kind === "embedding") embedding(section, data, root, pages);
      else if (data.kind === "tiles" && data.tiles.length) tiles(section, data, root);
      else return;
    }
    section.hidden = false;
  });
})();
