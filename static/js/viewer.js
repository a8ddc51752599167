/* My OCR: the job viewer. The page works without this file (page links are anchors, the image link opens the
   image); this adds the zoom dialog, the box <-> text highlight and the current page in the page list.
   No inline scripts or styles: sizes are set through the CSSOM, which the Content-Security-Policy allows. */
(function () {
  "use strict";

  var ZOOM_MIN = 0.5;
  var ZOOM_MAX = 6;
  var ZOOM_STEP = 1.25;

  function ready(fn) {
    if (document.readyState !== "loading") fn(); else document.addEventListener("DOMContentLoaded", fn);
  }

  // --- Boxes and text -----------------------------------------------------------------------------------------
  // A box (g.box[data-block]) and a text block (.block[data-block]) of the same page article share a number.

  function linked(element) {
    var article = element.closest("article.page");
    var block = element.getAttribute("data-block");
    if (!article || block === null) return [];
    return Array.prototype.slice.call(article.querySelectorAll('[data-block="' + block + '"]'));
  }

  function highlight(element, on) {
    linked(element).forEach(function (item) { item.classList.toggle("is-linked", on); });
  }

  function linkTarget(event) {
    var target = event.target;
    if (!target || !target.closest) return null;
    return target.closest("article.page [data-block]");
  }

  document.addEventListener("mouseover", function (event) {
    var element = linkTarget(event);
    if (element && !(event.relatedTarget && element.contains(event.relatedTarget))) highlight(element, true);
  });
  document.addEventListener("mouseout", function (event) {
    var element = linkTarget(event);
    if (element && !(event.relatedTarget && element.contains(event.relatedTarget))) highlight(element, false);
  });
  document.addEventListener("focusin", function (event) {
    var element = linkTarget(event);
    if (element) highlight(element, true);
  });
  document.addEventListener("focusout", function (event) {
    var element = linkTarget(event);
    if (element) highlight(element, false);
  });

  // A click (or Enter) on a box shows its text; on a text block, its first box.
  function reveal(element) {
    var other = linked(element).filter(function (item) {
      return item.classList.contains("box") !== element.classList.contains("box");
    })[0];
    if (!other) return;
    var isBox = other.classList.contains("box");
    // On a narrow screen the image is above the text: a tap on the text only highlights, it does not jump away.
    if (!(isBox && window.matchMedia("(width < 900px)").matches)) {
      other.scrollIntoView({ block: "nearest", behavior: "smooth" });
    }
    if (!isBox) other.focus({ preventScroll: true });
  }

  document.addEventListener("click", function (event) {
    var element = linkTarget(event);
    if (element && !event.target.closest("a, button")) reveal(element);
  });
  document.addEventListener("keydown", function (event) {
    var element = linkTarget(event);
    if (element && element === event.target && element.classList.contains("box") && event.key === "Enter") {
      event.preventDefault();
      reveal(element);
    }
  });

  // --- The zoom dialog -----------------------------------------------------------------------------------------

  var zoom = { scale: 1, opener: null };

  function dialog() { return document.getElementById("zoom"); }

  function applyZoom() {
    var box = dialog();
    var canvas = box.querySelector("[data-zoom-canvas]");
    var stage = box.querySelector("[data-zoom-stage]");
    var image = canvas.querySelector("img");
    if (!image) return;
    // Scale 1 fits the whole page in the window; the canvas is sized, the image and its boxes follow it.
    var ratio = (image.naturalHeight || image.height || 1) / (image.naturalWidth || image.width || 1);
    var fitWidth = Math.max(100, Math.min(stage.clientWidth - 16, (stage.clientHeight - 16) / ratio));
    canvas.style.width = Math.round(fitWidth * zoom.scale) + "px";
    box.querySelector("[data-zoom-level]").textContent = Math.round(zoom.scale * 100) + "%";
    box.dataset.scale = String(zoom.scale);
    disable(box.querySelector('[data-zoom-step="out"]'), zoom.scale <= ZOOM_MIN);
    disable(box.querySelector('[data-zoom-step="in"]'), zoom.scale >= ZOOM_MAX);
  }

  // A focused button that is disabled hands the focus to the image, so that the keys keep working.
  function disable(button, disabled) {
    if (disabled && document.activeElement === button) dialog().querySelector("[data-zoom-stage]").focus();
    button.disabled = disabled;
  }

  // Zooms keep the point under (clientX, clientY), or the middle of the window, where it was.
  function setZoom(scale, clientX, clientY) {
    var stage = dialog().querySelector("[data-zoom-stage]");
    var rect = stage.getBoundingClientRect();
    var x = clientX === undefined ? stage.clientWidth / 2 : clientX - rect.left;
    var y = clientY === undefined ? stage.clientHeight / 2 : clientY - rect.top;
    var before = zoom.scale;
    var pointX = (stage.scrollLeft + x) / before;
    var pointY = (stage.scrollTop + y) / before;
    zoom.scale = Math.min(ZOOM_MAX, Math.max(ZOOM_MIN, Math.round(scale * 1000) / 1000));
    applyZoom();
    stage.scrollLeft = pointX * zoom.scale - x;
    stage.scrollTop = pointY * zoom.scale - y;
  }

  function step(direction) {
    if (direction === "in") setZoom(zoom.scale * ZOOM_STEP);
    else if (direction === "out") setZoom(zoom.scale / ZOOM_STEP);
    else setZoom(1);
  }

  // The zoom link of the page ``offset`` pages after the one shown (before it, if negative), if there is one.
  function turnedLink(offset) {
    var article = zoom.opener && zoom.opener.closest("article.page[data-page]");
    if (!article) return null;
    var number = parseInt(article.dataset.page, 10) + offset;
    return document.querySelector('article.page[data-page="' + number + '"] a[data-zoom]');
  }

  function turn(offset) {
    var link = turnedLink(offset);
    if (link) openZoom(link);
  }

  function openZoom(link) {
    var box = dialog();
    if (!box || typeof box.showModal !== "function") return false;
    var figure = link.closest(".page__figure");
    var canvas = box.querySelector("[data-zoom-canvas]");
    canvas.textContent = "";
    var image = document.createElement("img");
    image.src = link.getAttribute("href");
    image.alt = figure.querySelector("img").alt;
    image.draggable = false;
    canvas.appendChild(image);
    var boxes = figure.querySelector("svg.boxes");
    if (boxes) {
      var copy = boxes.cloneNode(true);
      copy.querySelectorAll("[tabindex]").forEach(function (item) { item.removeAttribute("tabindex"); });
      copy.querySelectorAll("[data-block]").forEach(function (item) { item.removeAttribute("data-block"); });
      canvas.appendChild(copy);
    }
    box.querySelector(".zoom__title").textContent = link.dataset.zoomTitle || "";
    var turning = box.open;
    zoom.opener = link;
    if (!turning) {
      zoom.scale = 1; // a page turned to keeps the zoom of the one before
      box.showModal();
    }
    box.querySelector("[data-zoom-stage]").scrollTo(0, 0);
    disable(box.querySelector('[data-zoom-turn="-1"]'), !turnedLink(-1));
    disable(box.querySelector('[data-zoom-turn="1"]'), !turnedLink(1));
    if (!turning || !box.contains(document.activeElement)) box.querySelector("[data-zoom-stage]").focus();
    if (image.complete) applyZoom(); else image.addEventListener("load", applyZoom, { once: true });
    applyZoom();
    return true;
  }

  function initZoom() {
    var box = dialog();
    if (!box) return;
    box.addEventListener("click", function (event) {
      var button = event.target.closest("button");
      if (button && button.dataset.zoomStep) step(button.dataset.zoomStep);
      else if (button && button.dataset.zoomTurn) turn(parseInt(button.dataset.zoomTurn, 10));
      else if (button && button.hasAttribute("data-zoom-close")) box.close();
      else if (event.target === box) box.close(); // a click on the backdrop
    });
    // On the document: a button that becomes disabled (the last zoom step, the last page) drops the focus.
    document.addEventListener("keydown", function (event) {
      if (!box.open || event.ctrlKey || event.metaKey || event.altKey) return;
      if (event.key === "+" || event.key === "=") step("in");
      else if (event.key === "-" || event.key === "_") step("out");
      else if (event.key === "0") step("fit");
      else if (event.key === "PageDown") turn(1);
      else if (event.key === "PageUp") turn(-1);
      else return;
      event.preventDefault();
    });
    // Ctrl + wheel, which is also what a trackpad's pinch sends.
    box.addEventListener("wheel", function (event) {
      if (!event.ctrlKey) return;
      event.preventDefault();
      setZoom(zoom.scale * (event.deltaY < 0 ? 1.1 : 1 / 1.1), event.clientX, event.clientY);
    }, { passive: false });
    // A double click or double tap zooms in twice as far, or back to the whole page.
    var stage = box.querySelector("[data-zoom-stage]");
    stage.addEventListener("dblclick", function (event) {
      setZoom(zoom.scale > 1 ? 1 : 2, event.clientX, event.clientY);
    });
    // Two fingers pinch; one finger (or the mouse) drags the enlarged page.
    var pointers = {};
    var pinch = null;
    var drag = null;
    function spread() {
      var points = Object.keys(pointers).map(function (key) { return pointers[key]; });
      return {
        distance: Math.hypot(points[0].x - points[1].x, points[0].y - points[1].y) || 1,
        x: (points[0].x + points[1].x) / 2,
        y: (points[0].y + points[1].y) / 2,
      };
    }
    stage.addEventListener("pointerdown", function (event) {
      pointers[event.pointerId] = { x: event.clientX, y: event.clientY };
      var count = Object.keys(pointers).length;
      if (count === 2) {
        pinch = { start: spread().distance, scale: zoom.scale };
        drag = null;
      } else if (count === 1 && event.button === 0) {
        drag = { x: event.clientX, y: event.clientY, left: stage.scrollLeft, top: stage.scrollTop };
        stage.setPointerCapture(event.pointerId);
      }
    });
    stage.addEventListener("pointermove", function (event) {
      if (!pointers[event.pointerId]) return;
      pointers[event.pointerId] = { x: event.clientX, y: event.clientY };
      if (pinch && Object.keys(pointers).length === 2) {
        var now = spread();
        setZoom(pinch.scale * now.distance / pinch.start, now.x, now.y);
      } else if (drag) {
        stage.scrollLeft = drag.left - (event.clientX - drag.x);
        stage.scrollTop = drag.top - (event.clientY - drag.y);
        stage.classList.add("is-dragging");
      }
    });
    function lift(event) {
      delete pointers[event.pointerId];
      if (Object.keys(pointers).length < 2) pinch = null;
      if (!Object.keys(pointers).length) {
        drag = null;
        stage.classList.remove("is-dragging");
      }
    }
    stage.addEventListener("pointerup", lift);
    stage.addEventListener("pointercancel", lift);
    box.addEventListener("close", function () {
      box.querySelector("[data-zoom-canvas]").textContent = "";
      if (zoom.opener && document.contains(zoom.opener)) zoom.opener.focus();
      zoom.opener = null;
    });
    window.addEventListener("resize", function () { if (box.open) applyZoom(); });
  }

  document.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest("a[data-zoom]");
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    if (openZoom(link)) event.preventDefault();
  });

  // --- The page list -------------------------------------------------------------------------------------------
  // The entry of the page in view is marked current; entries replaced by live updates are marked again.

  var current = null;

  function markCurrent() {
    document.querySelectorAll("[data-page-link]").forEach(function (link) {
      if (link.dataset.pageLink === current) {
        link.setAttribute("aria-current", "true");
        keepInView(link);
      } else {
        link.removeAttribute("aria-current");
      }
    });
  }

  // Scrolls the list itself (never the window) so that the current entry shows.
  function keepInView(link) {
    var strip = link.closest(".strip");
    if (!strip) return;
    var outer = strip.getBoundingClientRect();
    var inner = link.getBoundingClientRect();
    if (inner.left < outer.left) strip.scrollLeft -= outer.left - inner.left + 8;
    else if (inner.right > outer.right) strip.scrollLeft += inner.right - outer.right + 8;
    if (inner.top < outer.top) strip.scrollTop -= outer.top - inner.top + 8;
    else if (inner.bottom > outer.bottom) strip.scrollTop += inner.bottom - outer.bottom + 8;
  }

  function initStrip() {
    var pages = document.querySelectorAll("article.page[data-page]");
    if (pages.length < 2 || !("IntersectionObserver" in window)) return;
    var visible = {};
    var observer = new IntersectionObserver(function (entries) {
      entries.forEach(function (entry) { visible[entry.target.dataset.page] = entry.isIntersecting; });
      var first = Object.keys(visible).filter(function (key) { return visible[key]; })
        .sort(function (a, b) { return a - b; })[0];
      if (first && first !== current) {
        current = first;
        markCurrent();
      }
    }, { rootMargin: "-20% 0px -60% 0px" });
    pages.forEach(function (page) { observer.observe(page); });
    document.addEventListener("htmx:oobAfterSwap", function () {
      // A live update replaces a page's article and its entry: watch the new article, mark the new entry.
      document.querySelectorAll("article.page[data-page]").forEach(function (page) { observer.observe(page); });
      markCurrent();
    });
  }

  ready(function () {
    initZoom();
    initStrip();
  });
})();
