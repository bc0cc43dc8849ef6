// The console's sign-in page: sends the admin token to POST /admin/console/session as
// "Authorization: Bearer" (a header a form from another site cannot send), which answers
// with the console's cookie; keeps the token in this tab's sessionStorage for the admin
// endpoints, then loads the console.
"use strict";

(function () {
  const TOKEN_KEY = "stripe-gateway-admin-token";
  const $ = (id) => document.getElementById(id);

  async function signIn(event) {
    event.preventDefault();
    const value = $("token").value.trim();
    if (!value) return;
    $("login-error").textContent = "";
    $("login-button").disabled = true;
    let response;
    try {
      response = await fetch("/admin/console/session", {
        method: "POST",
        headers: { Authorization: "Bearer " + value },
        cache: "no-store",
        credentials: "same-origin",
      });
    } catch (err) {
      $("login-error").textContent = String(err.message);
      $("login-button").disabled = false;
      return;
    }
    if (!response.ok) {
      $("login-error").textContent =
        response.status === 401 ? "That token was refused." : "Sign-in failed: " + response.status;
      $("token").value = "";
      $("login-button").disabled = false;
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    window.location.replace("/");
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", signIn);
  });
})();
