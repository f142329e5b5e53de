"""The spec's Python example, as written; only the base URL is changed
(from https://neptun-webui.vercel.app to the local server in BASE_URL)."""

import os

from pydantic import BaseModel
import httpx

BASE_URL = os.environ["NEPTUN_BASE_URL"]


class DeleteChatResponse(BaseModel):
    success: bool


async def delete_chat(
    user_id: str,
    chat_id: int,
    session_cookie: str
) -> bool:
    async with httpx.AsyncClient() as client:
        response = await client.delete(
            f"{BASE_URL}/api/users/{user_id}/chats/{chat_id}",
            cookies={"neptun-session": session_cookie}
        )
        response.raise_for_status()
        return response.json()
