// Prism dashboard behaviour: toasts, confirm dialogs and charts. Everything else is
// htmx attributes in the templates; the server decides what each partial shows.
(function () {
  "use strict";

  var TOAST_MS = 8000;

  function toast(detail) {
    var box = document.getElementById("toasts");
    if (!box || !detail || !detail.message) return;
    var item = document.createElement("div");
    item.className = "toast toast-" + (detail.level || "info");
    item.textContent = detail.message;
    box.appendChild(item);
    window.setTimeout(function () { item.remove(); }, TOAST_MS);
  }

  document.body.addEventListener("prism:toast", function (event) { toast(event.detail); });
  document.body.addEventListener("htmx:sendError", function () {
    toast({ level: "error", message: "Prism did not answer; nothing was changed by this page." });
  });

  // Server-rendered toasts (messages after a redirect) fade like the others.
  document.querySelectorAll("#toasts .toast").forEach(function (item) {
    window.setTimeout(function () { item.remove(); }, TOAST_MS);
  });

  // The confirm step arrives in #dialog-slot; open it as a modal dialog, which keeps
  // the keyboard focus inside it and closes on Escape.
  document.body.addEventListener("htmx:afterSwap", function (event) {
    if (event.detail.target.id !== "dialog-slot") return;
    var dialog = event.detail.target.querySelector("dialog");
    if (!dialog) return;
    dialog.addEventListener("close", function () { dialog.remove(); });
    dialog.showModal();
    var first = dialog.querySelector("textarea, input[type=radio]:checked, button[type=submit]");
    if (first) first.focus();
  });

  document.body.addEventListener("click", function (event) {
    var button = event.target.closest("[data-close-dialog]");
    if (button) button.closest("dialog").close();
  });

  // Whatever the answer to a confirmed action, the dialog has done its job: the toast
  // says what happened and the live partials refresh.
  document.body.addEventListener("htmx:afterRequest", function (event) {
    var dialog = event.detail.elt.closest && event.detail.elt.closest("dialog");
    if (dialog && event.detail.requestConfig.verb === "post" && dialog.open) dialog.close();
  });

  // A partial marked data-swap-errors answers bad input with 400 and the field errors,
  // which htmx would otherwise not swap in.
  document.body.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.detail.target;
    if (event.detail.xhr.status === 400 && target && target.hasAttribute("data-swap-errors")) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  // Charts: a partial carries its figure as JSON next to a chart element that stays in
  // place, so a refresh redraws the chart without replacing it.
  var CONFIG = { displaylogo: false, responsive: true };

  function draw(holder) {
    var chart = document.getElementById(holder.getAttribute("data-chart"));
    var data = holder.querySelector("script[type='application/json']");
    if (!chart || !data || !window.Plotly) return;
    var figure = JSON.parse(data.textContent);
    window.Plotly.react(chart, figure.data, figure.layout, CONFIG);
  }

  htmx.onLoad(function (root) {
    if (root.matches && root.matches("[data-chart]")) draw(root);
    root.querySelectorAll("[data-chart]").forEach(draw);
  });
})();
