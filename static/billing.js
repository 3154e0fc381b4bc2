// Adding a card on the Billing page. Stripe.js's Card Element takes the number, so it goes
// to Stripe and never to this server: the server makes a SetupIntent, Stripe.js confirms it
// with the card, and the form then posts the SetupIntent's id for the server to check.
"use strict";

(() => {
  const form = document.getElementById("card-form");
  if (!form || typeof Stripe === "undefined") {
    return;
  }
  const stripe = Stripe(form.dataset.publishableKey);
  const card = stripe.elements().create("card");
  card.mount("#card-element");
  const errors = document.getElementById("card-errors");
  const button = form.querySelector("button[type=submit]");

  async function clientSecret() {
    const response = await fetch(form.dataset.setupUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRFToken": form.elements.csrfmiddlewaretoken.value },
    });
    const body = await response.json().catch(() => ({ error: `The server answered ${response.status}.` }));
    if (!response.ok) {
      throw new Error(body.error);
    }
    return body.client_secret;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    errors.textContent = "";
    try {
      const result = await stripe.confirmCardSetup(await clientSecret(), { payment_method: { card } });
      if (result.error) {
        // Stripe's own words: "Your card was declined.", "Your card number is incomplete.", ...
        throw new Error(result.error.message || "Stripe did not accept the card.");
      }
      form.elements.setup_intent.value = result.setupIntent.id;
      form.submit();
    } catch (error) {
      errors.textContent = error.message;
      button.disabled = false;
    }
  });
})();
