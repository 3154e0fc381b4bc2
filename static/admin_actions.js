// Admin change lists: the actions named in this script's data-confirm-actions (action name to
// question) ask before they run, since they cannot be undone. Kept in a file for the CSP.
"use strict";

(() => {
  const questions = JSON.parse(document.currentScript.dataset.confirmActions);
  document.addEventListener("submit", (event) => {
    const form = event.target.closest("#changelist-form");
    const select = form && form.querySelector('select[name="action"]');
    const question = select && questions[select.value];
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });
})();
