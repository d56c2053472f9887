/* lmscope.viz runtime: hover tooltips for every figure, and the attention view.
   Loaded inline with each figure (no network); defined once per page. */
(function () {
  "use strict";
  if (window.lmscopeViz1) return;

  function quote(t) { return "'" + t.replace(/\n/g, "\u21b5") + "'"; }

  function showTip(tip, root, e, text) {
    var r = root.getBoundingClientRect();
    tip.textContent = text;
    tip.style.display = "block";
    var x = e.clientX - r.left + 14, y = e.clientY - r.top + 14;
    if (x + tip.offsetWidth > r.width) x = Math.max(0, e.clientX - r.left - tip.offsetWidth - 8);
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }

  /* Every element with data-tip (SVG <title>s become data-tip) shows its text on hover. */
  function tooltips(root) {
    root.querySelectorAll("svg title").forEach(function (t) {
      t.parentNode.setAttribute("data-tip", t.textContent);
      t.remove();
    });
    var tip = document.createElement("div");
    tip.className = "lmv-tip";
    root.appendChild(tip);
    root.addEventListener("mousemove", function (e) {
      var el = e.target.closest && e.target.closest("[data-tip]");
      if (el && root.contains(el)) showTip(tip, root, e, el.getAttribute("data-tip"));
      else tip.style.display = "none";
    });
    root.addEventListener("mouseleave", function () { tip.style.display = "none"; });
  }

  /* Colour of t in [0, 1] on the figure's colour stops, as [r, g, b]. */
  function colour(stops, t) {
    t = Math.min(1, Math.max(0, t)) * (stops.length - 1);
    var i = Math.min(Math.floor(t), stops.length - 2), f = t - i, a = stops[i], b = stops[i + 1];
    return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
  }

  function paint(canvas, w, h, value, stops) {
    var ctx = canvas.getContext("2d"), img = ctx.createImageData(w, h), px = img.data;
    for (var y = 0; y < h; y++) {
      for (var x = 0; x < w; x++) {
        var c = colour(stops, value(y, x)), o = 4 * (y * w + x);
        px[o] = c[0]; px[o + 1] = c[1]; px[o + 2] = c[2]; px[o + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
  }

  /* The attention view: thumbnails of every head (layer x head), one head's pattern with tokens
     on both axes, and the tokens coloured by what the hovered token attends to (or is attended
     by). Values arrive as base64 uint16 (full) and uint8 (thumbnails). */
  function attention(root) {
    var D = JSON.parse(root.querySelector("script.lmv-data").textContent);
    var H = D.heads.length, nq = D.nq, nk = D.nk, q0 = D.q0, cell = D.cell;
    var full = atob(D.data), thumbs = atob(D.thumbs);
    var per = D.tri ? nq * (nq + 1) / 2 : nq * nk;
    var cur = D.selected.slice(), locked = D.selected.slice(), focus = null;
    function val(l, h, i, j) {
      var k;
      if (D.tri) {
        if (j > i) return 0;
        k = (l * H + h) * per + i * (i + 1) / 2 + j;
      } else {
        k = (l * H + h) * per + i * nk + j;
      }
      return (full.charCodeAt(2 * k) | (full.charCodeAt(2 * k + 1) << 8)) / 65535;
    }
    root.querySelectorAll("canvas.lmv-thumb").forEach(function (c) {
      var l = +c.dataset.l, h = +c.dataset.h, base = (l * H + h) * D.tq * D.tk;
      paint(c, D.tk, D.tq, function (y, x) {
        return thumbs.charCodeAt(base + y * D.tk + x) / 255;
      }, D.stops);
      c.addEventListener("mouseenter", function () { select(l, h); });
      c.addEventListener("click", function () { locked = [l, h]; select(l, h); });
    });
    root.querySelector(".lmv-grid").addEventListener("mouseleave", function () {
      select(locked[0], locked[1]);
    });
    var matrix = root.querySelector("canvas.lmv-matrix");
    var rowHl = root.querySelector(".lmv-hl-row"), colHl = root.querySelector(".lmv-hl-col");
    var toks = root.querySelectorAll(".lmv-toks .lmv-tok");
    var title = root.querySelector(".lmv-detail-title");
    function mode() {
      var src = root.querySelector("input[value=src]");
      return src && src.checked ? "src" : "dest";
    }
    function select(l, h) {
      cur = [l, h];
      root.dataset.layer = l;
      root.dataset.head = h;
      title.textContent = "Layer " + D.layers[l] + ", head " + D.heads[h];
      root.querySelectorAll("canvas.lmv-thumb").forEach(function (c) {
        c.classList.toggle("lmv-sel", +c.dataset.l === l && +c.dataset.h === h);
        c.classList.toggle("lmv-locked", +c.dataset.l === locked[0] && +c.dataset.h === locked[1]);
      });
      paint(matrix, nk, nq, function (y, x) { return val(l, h, y, x); }, D.stops);
      if (focus) highlight(focus[0], focus[1]);
    }
    /* kind "dest": key position j's row (what the token at j attends to);
       kind "src": key position j's column (which tokens attend to j). */
    function highlight(kind, j) {
      focus = [kind, j];
      var l = cur[0], h = cur[1], i = j - q0;
      rowHl.style.display = colHl.style.display = "none";
      if (kind === "dest" && i >= 0) {
        rowHl.style.display = "block";
        rowHl.style.top = i * cell + "px";
      } else if (kind === "src") {
        colHl.style.display = "block";
        colHl.style.left = j * cell + "px";
      }
      toks.forEach(function (t, k) {
        var a = null;
        if (kind === "dest" && i >= 0) a = val(l, h, i, k);
        else if (kind === "src" && k >= q0) a = val(l, h, k - q0, j);
        t.classList.toggle("lmv-focus", k === j);
        if (a === null) {
          t.style.background = "";
          t.style.color = "";
          t.removeAttribute("data-a");
          t.removeAttribute("data-tip");
          return;
        }
        var c = colour(D.stops, a);
        t.style.background = "rgb(" + c.map(Math.round).join(",") + ")";
        t.style.color = a > 0.55 ? "white" : "";
        t.dataset.a = a.toFixed(5);
        var from = kind === "dest" ? j : k, to = kind === "dest" ? k : j;
        t.dataset.tip = "attention from " + quote(D.tokens[from]) + " (" + from + ") to "
          + quote(D.tokens[to]) + " (" + to + "): " + a.toFixed(4);
      });
    }
    function clear() {
      focus = null;
      rowHl.style.display = colHl.style.display = "none";
      toks.forEach(function (t) {
        t.classList.remove("lmv-focus");
        t.style.background = "";
        t.style.color = "";
        t.removeAttribute("data-a");
        t.removeAttribute("data-tip");
      });
    }
    toks.forEach(function (t, j) {
      t.addEventListener("mouseenter", function () { highlight(mode(), j); });
    });
    root.querySelector(".lmv-toks").addEventListener("mouseleave", clear);
    root.querySelectorAll(".lmv-qlabel").forEach(function (t) {
      t.addEventListener("mouseenter", function () { highlight("dest", +t.dataset.i + q0); });
    });
    root.querySelectorAll(".lmv-klabel").forEach(function (t) {
      t.addEventListener("mouseenter", function () { highlight("src", +t.dataset.i); });
    });
    matrix.addEventListener("mousemove", function (e) {
      var r = matrix.getBoundingClientRect();
      var i = Math.min(nq - 1, Math.floor((e.clientY - r.top) / cell));
      var j = Math.min(nk - 1, Math.floor((e.clientX - r.left) / cell));
      matrix.dataset.tip = quote(D.tokens[i + q0]) + " (" + (i + q0) + ") \u2192 "
        + quote(D.tokens[j]) + " (" + j + "): " + val(cur[0], cur[1], i, j).toFixed(4);
      if (!focus || focus[0] !== "dest" || focus[1] !== i + q0) highlight("dest", i + q0);
    });
    root.querySelector(".lmv-matrix-box").addEventListener("mouseleave", clear);
    root.querySelectorAll(".lmv-mode input").forEach(function (inp) {
      inp.addEventListener("change", clear);
    });
    select(cur[0], cur[1]);
    var wrap = root.querySelector(".lmv-grid-wrap"), sel = root.querySelector(".lmv-thumb.lmv-sel");
    if (sel) wrap.scrollTop = Math.max(0, sel.offsetTop - wrap.offsetTop - wrap.clientHeight / 2);
  }

  window.lmscopeViz1 = {
    init: function (id) {
      var root = document.getElementById(id);
      if (!root || root.dataset.ready) return;
      root.dataset.ready = "1";
      if (root.dataset.kind === "attention") attention(root);
      tooltips(root);
    },
  };
})();
