// Levee console: the only script, served from 'self'. It never builds HTML from data.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  // "Select all" checkbox for bulk quarantine actions.
  var all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll("input[name=ids]").forEach(function (c) { c.checked = all.checked; });
    });
  }
  // Country database upload: the file goes as the raw body of an API call, with the
  // session's CSRF token in the header the API checks.
  var send = document.getElementById("geoip-send");
  if (send) {
    send.addEventListener("click", function () {
      var file = document.getElementById("geoip-file").files[0];
      var status = document.getElementById("geoip-status");
      if (!file) { status.textContent = "Choose a file first."; return; }
      status.textContent = "Uploading...";
      fetch("/api/v1/geoip", {
        method: "POST",
        headers: { "X-CSRF-Token": document.getElementById("geoip-upload").getAttribute("data-csrf"),
                   "Content-Type": "application/octet-stream" },
        body: file,
        credentials: "same-origin"
      }).then(function (r) { return r.json(); }).then(function (j) {
        status.textContent = j.ok ? "Installed." : ("Refused: " + (j.error || "unknown error"));
        if (j.ok) { window.location.reload(); }
      }).catch(function () { status.textContent = "Upload failed."; });
    });
  }
  // Training upload: the file goes as the raw body (CSRF token in the header), then the
  // page polls the status endpoint and moves the progress bar until the run finishes.
  var train = document.getElementById("training-send");
  if (train) {
    var bar = document.getElementById("training-progress");
    var tstatus = document.getElementById("training-status");
    var counts = document.getElementById("training-counts");
    var poll = function () {
      fetch("/api/v1/training", { credentials: "same-origin" }).then(function (r) { return r.json(); }).then(function (j) {
        if (j.model) { counts.textContent = j.model.spam + " spam and " + j.model.ham + " ham"; }
        var run = j.run;
        if (!run) { return; }
        bar.max = Math.max(run.total, 1);
        bar.value = run.done;
        if (run.error) {
          tstatus.textContent = "Failed: " + run.error;
          train.disabled = false;
        } else if (run.finished) {
          tstatus.textContent = "Learned " + run.done + " " + run.label + " message(s).";
          train.disabled = false;
        } else {
          tstatus.textContent = "Training " + run.label + ": " + run.done + "/" + run.total;
          window.setTimeout(poll, 500);
        }
      }).catch(function () { tstatus.textContent = "Lost contact with the console."; train.disabled = false; });
    };
    if (train.disabled) { poll(); }
    train.addEventListener("click", function () {
      var file = document.getElementById("training-file").files[0];
      var label = document.querySelector("input[name=training-label]:checked");
      if (!file) { tstatus.textContent = "Choose a file first."; return; }
      train.disabled = true;
      tstatus.textContent = "Uploading...";
      fetch("/api/v1/training?label=" + encodeURIComponent(label ? label.value : "spam"), {
        method: "POST",
        headers: { "X-CSRF-Token": document.getElementById("training-upload").getAttribute("data-csrf"),
                   "Content-Type": "application/octet-stream" },
        body: file,
        credentials: "same-origin"
      }).then(function (r) { return r.json(); }).then(function (j) {
        if (j.ok) { tstatus.textContent = "Read " + j.messages + " message(s); training..."; poll(); }
        else { tstatus.textContent = "Refused: " + (j.error || "unknown error"); train.disabled = false; }
      }).catch(function () { tstatus.textContent = "Upload failed."; train.disabled = false; });
    });
  }
  // Local rules upload: raw body with the file's name in the query (a lone .cf needs it);
  // the server answers once the rules are tried and installed, or refuses with FILE:LINE.
  var rsend = document.getElementById("rules-send");
  if (rsend) {
    rsend.addEventListener("click", function () {
      var file = document.getElementById("rules-file").files[0];
      var rstatus = document.getElementById("rules-status");
      if (!file) { rstatus.textContent = "Choose a file first."; return; }
      rsend.disabled = true;
      rstatus.textContent = "Uploading and loading the rules...";
      fetch("/api/v1/rules?name=" + encodeURIComponent(file.name), {
        method: "POST",
        headers: { "X-CSRF-Token": document.getElementById("rules-upload").getAttribute("data-csrf"),
                   "Content-Type": "application/octet-stream" },
        body: file,
        credentials: "same-origin"
      }).then(function (r) { return r.json(); }).then(function (j) {
        rsend.disabled = false;
        if (j.ok) {
          rstatus.textContent = "Installed " + j.files.length + " file(s): " + j.loaded + " rules loaded, " + j.skipped + " skipped.";
          window.setTimeout(function () { window.location.reload(); }, 1500);
        } else { rstatus.textContent = "Refused: " + (j.error || "unknown error"); }
      }).catch(function () { rstatus.textContent = "Upload failed."; rsend.disabled = false; });
    });
  }
  // Confirm destructive buttons.
  document.querySelectorAll("button[data-confirm]").forEach(function (b) {
    b.addEventListener("click", function (e) {
      if (!window.confirm(b.getAttribute("data-confirm"))) { e.preventDefault(); }
    });
  });
});
