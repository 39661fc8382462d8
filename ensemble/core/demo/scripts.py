"""What the demo's synthetic speakers say.

Lines are grouped into `N_SETS` script sets, like the scripted recording sessions of the AI Hub
data: every line and every speaker belongs to one set, so a leak-free split (by speaker and by
transcript) can still put every class in every split. The i-th line of a list goes to set
i % N_SETS; each emergency class has N_SETS lines in each language, one per set.
"""

from __future__ import annotations

N_SETS = 5

# Shouted lines per emergency class: (Korean, English).
EMERGENCY_LINES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "sexual_assault": (
        (
            "하지 마세요!",
            "만지지 마세요!",
            "싫어요, 저리 가세요!",
            "이상한 사람이 따라와요!",
            "놔주세요, 소리 지를 거예요!",
        ),
        (
            "Don't touch me!",
            "Get away from me!",
            "Stop it, leave me alone!",
            "Let go of me!",
            "Someone is following me!",
        ),
    ),
    "robbery": (
        (
            "강도야!",
            "가방 놓으세요!",
            "돈 없어요, 제발 해치지 마세요!",
            "칼 내려놓으세요!",
            "내 지갑 돌려줘요!",
        ),
        (
            "Give me back my bag!",
            "He has a knife!",
            "Robbery! Stop him!",
            "Take the money, don't hurt me!",
            "Put the knife down!",
        ),
    ),
    "theft": (
        (
            "도둑이야!",
            "도둑 잡아라!",
            "누가 내 지갑 가져갔어요!",
            "창문으로 누가 들어왔어요!",
            "내 휴대폰 훔쳐 갔어요!",
        ),
        (
            "Thief! Stop that man!",
            "Someone stole my phone!",
            "There's a burglar in the house!",
            "He took my wallet!",
            "Somebody broke in!",
        ),
    ),
    "violence": (
        (
            "때리지 마세요!",
            "그만 때려!",
            "아파요, 그만하세요!",
            "사람 살려, 맞고 있어요!",
            "밀지 마세요!",
        ),
        (
            "Stop hitting me!",
            "Please stop, you're hurting me!",
            "Don't hit her!",
            "He's beating me!",
            "Stop pushing me!",
        ),
    ),
    "trapped": (
        (
            "문이 안 열려요!",
            "여기 갇혔어요, 꺼내주세요!",
            "엘리베이터에 갇혔어요!",
            "문 좀 열어주세요!",
            "화장실 문이 잠겼어요!",
        ),
        (
            "I'm stuck in here, open the door!",
            "The door won't open!",
            "I'm trapped in the elevator!",
            "Let me out!",
            "I'm locked in!",
        ),
    ),
    "electrical_accident": (
        (
            "감전됐어요!",
            "전기가 튀었어요!",
            "콘센트에서 불꽃이 나요!",
            "전선이 타고 있어요!",
            "두꺼비집 내려요!",
        ),
        (
            "I got an electric shock!",
            "The outlet is sparking!",
            "The wire is burning!",
            "Turn off the power!",
            "He touched the live wire!",
        ),
    ),
    "gas_accident": (
        (
            "가스 냄새가 나요!",
            "가스가 새요, 창문 열어요!",
            "가스 밸브 잠가!",
            "가스 폭발했어요!",
            "머리가 어지러워요, 가스 같아요!",
        ),
        (
            "I smell gas!",
            "There's a gas leak, get out!",
            "Shut off the gas valve!",
            "The gas exploded!",
            "Open the windows, it's gas!",
        ),
    ),
    "fire": (
        (
            "불이야!",
            "불났어요, 백십구 불러주세요!",
            "연기가 나요, 빨리 나가요!",
            "부엌에 불이 붙었어요!",
            "불 꺼! 불 꺼!",
        ),
        (
            "Fire! Everybody get out!",
            "The kitchen is on fire!",
            "There's smoke everywhere!",
            "Call the fire department!",
            "The house is burning!",
        ),
    ),
    "medical_emergency": (
        (
            "숨을 못 쉬겠어요!",
            "가슴이 너무 아파요!",
            "사람이 쓰러졌어요!",
            "구급차 불러주세요!",
            "정신 차려요, 눈 떠 봐요!",
        ),
        (
            "Somebody call an ambulance!",
            "He's not breathing!",
            "My chest hurts so much!",
            "She collapsed, call a doctor!",
            "Wake up, can you hear me?",
        ),
    ),
    "typhoon": (
        (
            "바람이 너무 세요!",
            "창문이 깨졌어요!",
            "지붕이 날아가요!",
            "간판이 떨어져요, 피해요!",
            "나무가 쓰러졌어요!",
        ),
        (
            "The wind broke the window!",
            "The roof is coming off!",
            "Get away from the windows!",
            "A tree fell on the house!",
            "The storm is too strong!",
        ),
    ),
    "earthquake": (
        (
            "지진이야!",
            "땅이 흔들려요, 책상 밑으로!",
            "건물이 흔들려요!",
            "밖으로 나가요, 지진이에요!",
            "머리 보호하세요!",
        ),
        (
            "Earthquake! Get under the table!",
            "The whole building is shaking!",
            "It's an earthquake, get out!",
            "Cover your head!",
            "The ground is moving!",
        ),
    ),
    "fall": (
        (
            "아이고, 넘어졌어요!",
            "일어날 수가 없어요!",
            "계단에서 떨어졌어요!",
            "다리를 못 움직이겠어요!",
            "미끄러져서 허리를 다쳤어요!",
        ),
        (
            "I fell and I can't get up!",
            "I slipped in the bathroom!",
            "I fell down the stairs!",
            "I can't move my leg!",
            "I hurt my back, I can't stand!",
        ),
    ),
    "collapse": (
        (
            "건물이 무너져요!",
            "천장이 무너졌어요!",
            "깔렸어요, 꺼내주세요!",
            "벽이 무너졌어요!",
            "다리가 끼었어요!",
        ),
        (
            "The ceiling collapsed!",
            "I'm trapped under the rubble!",
            "The wall came down!",
            "The building is falling!",
            "My leg is stuck under the beam!",
        ),
    ),
    "help_request": (
        (
            "살려주세요!",
            "도와주세요!",
            "여기 사람 있어요, 도와주세요!",
            "누구 없어요? 도와주세요!",
            "제발 도와주세요!",
        ),
        (
            "Help!",
            "Help me, please!",
            "Somebody help me!",
            "Is anyone there? Help!",
            "Please, I need help!",
        ),
    ),
}

# Calls for help that may follow a class line, in any emergency class.
GENERIC_CALLS: tuple[tuple[str, ...], tuple[str, ...]] = (
    ("살려주세요!", "도와주세요!", "누가 좀 도와주세요!", "백십구 불러주세요!"),
    ("Help!", "Help me!", "Call nine one one!", "Somebody help!"),
)

# Calm everyday lines for normal clips: (Korean, English).
EVERYDAY_LINES: tuple[tuple[str, ...], tuple[str, ...]] = (
    (
        "오늘 날씨가 참 좋네요.",
        "저녁은 된장찌개 먹을까요?",
        "텔레비전 좀 켜 줄래요?",
        "내일 병원 예약이 몇 시였죠?",
        "엄마, 저 이따가 전화할게요.",
        "빨래는 내가 널어 놓을게.",
        "커피 한 잔 하실래요?",
        "주말에 시장에 같이 가요.",
        "이 드라마 정말 재미있네요.",
        "창문 좀 열어 주세요, 답답하네요.",
        "손주가 다음 주에 온대요.",
        "우유가 다 떨어졌어요.",
        "버스 정류장이 어디예요?",
        "공원에 산책 가요.",
        "라디오 소리 좀 줄여 주세요.",
    ),
    (
        "The weather is lovely today.",
        "What should we have for dinner?",
        "Could you turn on the TV?",
        "I'll call you back later.",
        "Let's go to the market this weekend.",
        "Would you like some tea?",
        "The bus should be here soon.",
        "I'm going for a walk in the park.",
        "Did you water the plants?",
        "This show is really good.",
    ),
)


def line_set(index: int) -> int:
    """The script set of the `index`-th line of a list."""
    return index % N_SETS
