/* My OCR: small progressive enhancements. Every page works without this file. No inline scripts anywhere. */
(function () {
  "use strict";
  document.documentElement.classList.replace("no-js", "js");

  function ready(fn) {
    if (document.readyState !== "loading") fn(); else document.addEventListener("DOMContentLoaded", fn);
  }

  // The upload form's enhancements live in upload.js, loaded by the upload page only.

  // Copy buttons: data-copy-target (an element's text) or data-copy-url (a download's text).
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy-target], [data-copy-url]");
    if (!button || !navigator.clipboard) return;
    var text = button.dataset.copyTarget
      ? Promise.resolve(document.querySelector(button.dataset.copyTarget).textContent)
      : fetch(button.dataset.copyUrl, { credentials: "same-origin" }).then(function (r) { return r.text(); });
    text.then(function (value) { return navigator.clipboard.writeText(value); }).then(function () {
      var label = button.textContent;
      // Keep the button's width while it says "Copied", so the buttons beside it do not move.
      button.style.minWidth = button.offsetWidth + "px";
      button.textContent = button.dataset.copied || "✓";
      setTimeout(function () { button.textContent = label; button.style.minWidth = ""; }, 1500);
    });
  });

  // Plain forms that ask first (htmx forms use hx-confirm).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) event.preventDefault();
  });

  // The elapsed time of a running job ticks between server updates, in the page's language ("42 s", "3 min 05 s"
  // from the formats the server put beside it).
  function duration(element, seconds) {
    var minutes = Math.floor(seconds / 60);
    var rest = seconds % 60;
    if (minutes === 0) return (element.dataset.secondsFormat || "%(seconds)s s").replace("%(seconds)s", seconds);
    return (element.dataset.minutesFormat || "%(minutes)s min %(seconds)02d s")
      .replace("%(minutes)s", minutes)
      .replace("%(seconds)02d", (rest < 10 ? "0" : "") + rest);
  }
  setInterval(function () {
    document.querySelectorAll("[data-started]").forEach(function (element) {
      var started = Date.parse(element.dataset.started);
      if (!isNaN(started)) element.textContent = duration(element, Math.max(0, Math.round((Date.now() - started) / 1000)));
    });
  }, 1000);

  // Keep the newest streamed text of a running page in view.
  document.addEventListener("htmx:oobAfterSwap", function (event) {
    var target = event.detail && event.detail.target;
    if (target && target.classList && target.classList.contains("page__raw")) target.scrollTop = target.scrollHeight;
  });
})();
