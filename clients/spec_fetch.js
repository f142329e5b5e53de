// The spec's TypeScript/JavaScript example, as written (TypeScript types
// removed so that the browser runs it); only the base URL is changed, from
// https://neptun-webui.vercel.app to the local server in window.NEPTUN_BASE_URL.
async function deleteChat(
  userId,
  chatId
) {
  const response = await fetch(
    `${window.NEPTUN_BASE_URL}/api/users/${userId}/chats/${chatId}`,
    {
      method: 'DELETE',
      credentials: 'include', // Important for cookie handling
    }
  )

  if (!response.ok) {
    throw new Error(`HTTP error! status: ${response.status}`)
  }

  return await response.json()
}
