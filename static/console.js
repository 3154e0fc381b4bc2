// Console behaviour shared by every page, kept in a file so that the Content-Security-Policy
// can refuse inline script. <form data-confirm="question"> asks before it submits.
"use strict";

document.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-confirm]");
  if (form && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});
