/* My OCR: the upload form's enhancements. The form works without this file: a plain multi-file post.
 *
 * - Files picked, dropped or taken from a folder are checked one by one by the server's preview, which keeps each
 *   accepted file as a pending upload and answers with its thumbnails and a hidden field holding its id.
 * - Start then sends those ids, not the files again (the file input is disabled on submit), so every job costs
 *   one upload. A file the preview could not check is sent as usual.
 * - Start is disabled while files are being checked, when no chosen file was accepted, and while the prompt is
 *   longer than the limit; a live counter shows the prompt's length.
 */
(function () {
  "use strict";

  var PREVIEW_CONCURRENCY = 2;

  function ready(fn) {
    if (document.readyState !== "loading") fn(); else document.addEventListener("DOMContentLoaded", fn);
  }

  function fromTemplate(form, name) {
    var template = form.querySelector("template[data-" + name + "]");
    return template ? template.content.cloneNode(true) : document.createDocumentFragment();
  }

  function initUpload() {
    var form = document.querySelector("form.upload");
    if (!form) return;
    var zone = form.querySelector("[data-dropzone]");
    var input = form.querySelector("input[type=file][name=file]");
    var list = form.querySelector("#preview");
    var start = form.querySelector("[data-start]");
    var summary = form.querySelector("[data-upload-summary]");
    var text = form.querySelector("textarea[name=text]");
    var counter = form.querySelector("[data-counter]");
    var csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;
    var generation = 0;
    var queue = [];
    var running = 0;

    function items(state) {
      return Array.prototype.slice.call(
        list.querySelectorAll("[data-upload-item]" + (state ? '[data-state="' + state + '"]' : ""))
      );
    }

    function selected(item) {
      var box = item.querySelector("input[type=checkbox][name=pending]");
      return !box || box.checked;
    }

    function promptLimit() {
      var preset = form.querySelector("input[name=preset]:checked");
      var limit = preset && preset.dataset.maxText ? preset.dataset.maxText : text && text.dataset.maxChars;
      return parseInt(limit || "0", 10);
    }

    // The prompt's counter: its length of the limit for the chosen preset, and a warning past it.
    function promptTooLong() {
      if (!text || !counter) return false;
      var limit = promptLimit();
      var length = text.value.length;
      counter.querySelector("[data-count]").textContent = String(length);
      counter.querySelector("[data-max]").textContent = String(limit);
      var over = Boolean(limit && length > limit);
      counter.classList.toggle("counter--over", over);
      counter.querySelector("[data-over]").hidden = !over;
      text.setAttribute("aria-invalid", over ? "true" : "false");
      return over;
    }

    function update() {
      var ready = items("ready").filter(selected).length + items("unchecked").length;
      var checking = items("checking").length;
      var refused = items("refused").length;
      var tooLong = promptTooLong();
      var words;
      if (checking) words = summary.dataset.checking;
      else if (!ready && refused) words = summary.dataset.allRefused;
      else if (!ready) words = summary.dataset.none;
      else words = ready === 1 ? summary.dataset.readyOne : summary.dataset.readyMany.replace("{n}", String(ready));
      if (!checking && ready && refused) words += " " + summary.dataset.refused;
      if (tooLong) words += " " + summary.dataset.tooLong;
      summary.textContent = words;
      start.disabled = Boolean(checking || !ready || tooLong);
    }

    function discard(ids) {
      if (!ids.length) return;
      var body = new FormData();
      ids.forEach(function (id) { body.append("discard", id); });
      fetch(form.dataset.previewUrl, { method: "POST", body: body, headers: { "X-CSRFToken": csrf }, credentials: "same-origin" });
    }

    function pendingIds(nodes) {
      var ids = [];
      nodes.forEach(function (node) {
        node.querySelectorAll("input[type=hidden][name=pending]").forEach(function (field) { ids.push(field.value); });
      });
      return ids;
    }

    function next() {
      while (running < PREVIEW_CONCURRENCY && queue.length) check(queue.shift());
      update();
    }

    function check(job) {
      running += 1;
      var body = new FormData();
      body.append("file", job.file, job.file.name);
      fetch(form.dataset.previewUrl, { method: "POST", body: body, headers: { "X-CSRFToken": csrf }, credentials: "same-origin" })
        .then(function (response) { if (!response.ok) throw new Error(response.status); return response.text(); })
        .then(function (html) {
          var parsed = document.createElement("template");
          parsed.innerHTML = html;
          if (job.generation !== generation) {
            discard(pendingIds([parsed.content])); // the form has other files now
            return;
          }
          job.item.replaceWith(parsed.content);
        })
        .catch(function () {
          if (job.generation !== generation) return;
          job.item.dataset.state = "unchecked";
          job.item.replaceChildren(job.item.firstChild, fromTemplate(form, "check-failed"));
        })
        .then(function () { running -= 1; next(); });
    }

    // A new choice replaces the files checked before (not the ones kept from an earlier try: they have boxes).
    function choose(files) {
      generation += 1;
      queue = [];
      var maxBytes = parseInt(form.dataset.maxBytes || "0", 10);
      var maxFiles = parseInt(form.dataset.maxFiles || "0", 10);
      var stale = items().filter(function (item) { return !item.querySelector("input[type=checkbox]"); });
      discard(pendingIds(stale));
      stale.forEach(function (item) { item.remove(); });
      Array.prototype.forEach.call(files, function (file, index) {
        var item = document.createElement("li");
        item.className = "upload-item";
        item.dataset.uploadItem = "";
        item.uploadFile = file;
        var name = document.createElement("p");
        name.className = "upload-item__name";
        name.textContent = file.name;
        item.appendChild(name);
        if (maxFiles && index >= maxFiles) {
          item.dataset.state = "refused";
          item.classList.add("upload-item--refused");
          item.appendChild(fromTemplate(form, "too-many"));
        } else if (maxBytes && file.size > maxBytes) {
          item.dataset.state = "refused";
          item.classList.add("upload-item--refused");
          item.appendChild(fromTemplate(form, "too-large"));
        } else {
          item.dataset.state = "checking";
          item.appendChild(fromTemplate(form, "checking"));
          queue.push({ file: file, item: item, generation: generation });
        }
        list.appendChild(item);
      });
      next();
    }

    input.addEventListener("change", function () { choose(input.files || []); });

    ["dragenter", "dragover"].forEach(function (name) {
      zone.addEventListener(name, function (event) { event.preventDefault(); zone.classList.add("is-dragging"); });
    });
    ["dragleave", "drop"].forEach(function (name) {
      zone.addEventListener(name, function () { zone.classList.remove("is-dragging"); });
    });
    function useFiles(files) {
      var transfer = new DataTransfer();
      files.forEach(function (file) { transfer.items.add(file); });
      input.files = transfer.files;
      input.dispatchEvent(new Event("change", { bubbles: true }));
    }

    // Only the images and PDFs of a folder: the rest of it is not what the user meant to read.
    function readable(files) {
      return files.filter(function (file) {
        return /^image\//.test(file.type) || /\.(pdf|png|jpe?g|webp|gif|bmp|tiff?)$/i.test(file.name);
      });
    }

    function filesUnder(entry) {
      if (entry.isFile) {
        return new Promise(function (resolve) { entry.file(function (file) { resolve([file]); }, function () { resolve([]); }); });
      }
      var reader = entry.createReader();
      var children = [];
      return new Promise(function (resolve) {
        (function more() {
          reader.readEntries(function (batch) {
            if (batch.length) { children = children.concat(Array.prototype.slice.call(batch)); more(); return; }
            Promise.all(children.map(filesUnder)).then(function (lists) { resolve([].concat.apply([], lists)); });
          }, function () { resolve([]); });
        })();
      });
    }

    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      var transfer = event.dataTransfer;
      if (!transfer || !transfer.files.length) return;
      // A dropped folder: its files, read while the drop's items are still there.
      var entries = Array.prototype.map.call(transfer.items || [], function (item) {
        return item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
      });
      if (typeof DataTransfer === "function" && entries.some(function (entry) { return entry && entry.isDirectory; })) {
        Promise.all(entries.filter(Boolean).map(filesUnder)).then(function (lists) {
          useFiles(readable([].concat.apply([], lists)));
        });
        return;
      }
      input.files = transfer.files; // every dropped file, not only the last one
      input.dispatchEvent(new Event("change", { bubbles: true }));
    });

    // A folder, where the browser can pick one: its images and PDFs go into the form's file input.
    var folderButton = form.querySelector("[data-choose-folder]");
    var folder = document.createElement("input");
    folder.type = "file";
    if (folderButton && "webkitdirectory" in folder && typeof DataTransfer === "function") {
      folder.webkitdirectory = true;
      folder.multiple = true;
      folderButton.hidden = false;
      folderButton.addEventListener("click", function () { folder.click(); });
      folder.addEventListener("change", function () { useFiles(readable(Array.prototype.slice.call(folder.files))); });
    }

    list.addEventListener("change", update); // a kept file's box
    form.addEventListener("change", function (event) { if (event.target.name === "preset") update(); });
    if (text) text.addEventListener("input", update);

    form.addEventListener("submit", function (event) {
      if (start.disabled) { event.preventDefault(); return; }
      // The files kept on the server already go as their ids, not as bytes again: only the ones the preview could
      // not check are sent (the server also leaves out a file it is sent twice).
      if (!input.files || !input.files.length) return;
      var unchecked = items("unchecked");
      if (!unchecked.length) {
        input.disabled = true;
      } else if (typeof DataTransfer === "function") {
        var transfer = new DataTransfer();
        unchecked.forEach(function (item) { if (item.uploadFile) transfer.items.add(item.uploadFile); });
        input.files = transfer.files;
      }
    });
    // Back to this page from the next one (the back-forward cache): the input must work again.
    window.addEventListener("pageshow", function () { input.disabled = false; update(); });

    update();
  }

  ready(initUpload);
})();
