// Copy buttons on the one-time secret pages: <button data-copy="#id"> copies that element's
// value (an input) or text (a snippet) to the clipboard, and says whether it worked.
"use strict";

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const target = document.querySelector(button.dataset.copy);
  if (!target) return;
  const text = "value" in target ? target.value : target.textContent;
  const label = button.dataset.label || button.textContent;
  button.dataset.label = label;
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch (error) {
    // No clipboard access (plain http, or refused): select the text for Ctrl+C instead.
    if (target.select) {
      target.select();
    } else {
      window.getSelection().selectAllChildren(target);
    }
    button.textContent = "Press Ctrl+C";
  }
  setTimeout(() => { button.textContent = label; }, 2000);
});
