// WIF Broker admin console: small progressive enhancements. Every page works without
// this file; with it, the wizard shows only the chosen scenario and validates as you
// type (the server answers with the same builders and rules the save applies), and the
// "Test it" page shows only the chosen input. Values are put into the page with
// textContent only, never as markup.
"use strict";

(function () {
  function $(selector, root) { return (root || document).querySelector(selector); }
  function $all(selector, root) { return Array.prototype.slice.call((root || document).querySelectorAll(selector)); }

  // Shows the blocks whose data-mode equals the checked radio of `name` inside `root`.
  function toggleByRadio(root, name, attribute) {
    var checked = $("input[name='" + name + "']:checked", root);
    var value = checked ? checked.value : "";
    $all("[" + attribute + "]", root).forEach(function (el) {
      el.classList.toggle("hidden", el.getAttribute(attribute) !== value);
    });
  }

  function setupScenarios(form) {
    var radios = $all("input[name='scenario']", form);
    if (radios.length === 0) { return; }
    function update() { toggleByRadio(form, "scenario", "data-scenario"); }
    radios.forEach(function (r) { r.addEventListener("change", update); });
    update();
  }

  function setupModes(root, name) {
    var radios = $all("input[name='" + name + "']", root);
    if (radios.length === 0) { return; }
    function update() { toggleByRadio(root, name, "data-mode"); }
    radios.forEach(function (r) { r.addEventListener("change", update); });
    update();
  }

  function setupWhen(form) {
    $all("[data-when]", form).forEach(function (block) {
      var box = form.elements[block.getAttribute("data-when")];
      if (!box) { return; }
      function update() { block.classList.toggle("hidden", !box.checked); }
      box.addEventListener("change", update);
      update();
    });
  }

  // What the page calls a field: its <label>'s text ("Organization (owner)"), not its id
  // ("gh_org"); fields without a label (the session) keep their name.
  function labelOf(form, field) {
    var input = form.elements[field];
    var label = input && input.labels && input.labels[0];
    return label ? label.textContent.trim() : field;
  }

  // The problems the server listed after a refused save, named the same way.
  function labelProblems(form) {
    $all("ul.problems li[data-field] > b, ul.warnings li[data-field] > b", form.parentNode).forEach(function (b) {
      var field = b.parentNode.getAttribute("data-field");
      if (b.textContent === field) { b.textContent = labelOf(form, field); }
    });
  }

  function setupDraft(form) {
    var url = form.getAttribute("data-draft");
    if (!url) { return; }
    var canSave = form.getAttribute("data-can-save") === "true";
    var save = $("#save", form);
    var subject = $("#subject");
    var kind = $("#rule-kind");
    var issuer = $("#issuer");
    var graph = $("#graph");
    var problems = $("#problems");
    var valid = $("#valid");
    var timer = null;
    var sequence = 0;

    function show(draft) {
      subject.textContent = draft.subject || draft.expression || "";
      kind.textContent = draft.expression ? "expression" : "subject";
      issuer.textContent = draft.issuer || "";
      graph.textContent = draft.graph || "";
      valid.textContent = draft.valid ? "Valid: the broker can save this credential." : "Not valid yet:";
      valid.className = draft.valid ? "ok" : "bad";
      while (problems.firstChild) { problems.removeChild(problems.firstChild); }
      $all("[aria-invalid]", form).forEach(function (el) { el.removeAttribute("aria-invalid"); });
      var warnings = $("#warnings");
      if (warnings) {
        while (warnings.firstChild) { warnings.removeChild(warnings.firstChild); }
        (draft.warnings || []).forEach(function (w) {
          var li = document.createElement("li");
          li.setAttribute("data-field", w.field);
          var b = document.createElement("b");
          b.textContent = "warning";
          li.appendChild(b);
          li.appendChild(document.createTextNode(": " + w.message));
          warnings.appendChild(li);
        });
      }
      (draft.problems || []).forEach(function (p) {
        var li = document.createElement("li");
        li.setAttribute("data-field", p.field);
        var b = document.createElement("b");
        b.textContent = labelOf(form, p.field);
        li.appendChild(b);
        li.appendChild(document.createTextNode(": " + p.message));
        problems.appendChild(li);
        var input = form.elements[p.field];
        if (input && input.setAttribute) { input.setAttribute("aria-invalid", "true"); }
      });
      if (save) { save.disabled = !(canSave && draft.valid); }
      form.setAttribute("data-draft-state", "ready");
    }

    function refresh() {
      var mine = ++sequence;
      form.setAttribute("data-draft-state", "pending");
      var body = new URLSearchParams(new FormData(form));
      var csrf = form.elements["csrf"] ? form.elements["csrf"].value : "";
      fetch(url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/x-www-form-urlencoded", "X-CSRF-Token": csrf },
        body: body.toString()
      }).then(function (response) {
        return response.json().then(function (json) { return { ok: response.ok, json: json }; });
      }).then(function (answer) {
        if (mine !== sequence) { return; }
        if (answer.ok) {
          show(answer.json);
        } else {
          show({ valid: false, problems: [{ field: "session", message: answer.json.error_description || "refused" }] });
        }
      }).catch(function () {
        if (mine === sequence) { form.setAttribute("data-draft-state", "error"); }
      });
    }

    function later() {
      form.setAttribute("data-draft-state", "pending");
      if (timer) { clearTimeout(timer); }
      timer = setTimeout(refresh, 150);
    }
    form.addEventListener("input", later);
    form.addEventListener("change", later);
    refresh();
  }

  document.addEventListener("DOMContentLoaded", function () {
    var wizard = $("#wizard");
    if (wizard) {
      setupScenarios(wizard);
      setupModes(wizard, "other_mode");
      setupWhen(wizard);
      labelProblems(wizard);
      setupDraft(wizard);
    }
    var test = $("#test-form");
    if (test) { setupModes(test, "mode"); }
  });
})();
