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
  // Confirm destructive buttons.
  document.querySelectorAll("button[data-confirm]").forEach(function (b) {
    b.addEventListener("click", function (e) {
      if (!window.confirm(b.getAttribute("data-confirm"))) { e.preventDefault(); }
    });
  });
});
