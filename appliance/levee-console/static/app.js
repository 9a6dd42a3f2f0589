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
  // Confirm destructive buttons.
  document.querySelectorAll("button[data-confirm]").forEach(function (b) {
    b.addEventListener("click", function (e) {
      if (!window.confirm(b.getAttribute("data-confirm"))) { e.preventDefault(); }
    });
  });
});
